"""The output protocols of one request: tool-call and thinking parsers, tool schemas,
structured output (JSON schema to grammar) and the plan that decides, per request, which of them
apply.
"""
