"""llama.cpp in this process: the binding (the one place that talks to llama_cpp), the
decode loop, chat templates, text streaming, cancellation, vision, embeddings, the loaded-model
cache and the safe-mode crash guard. Yields ``core.events``; knows nothing of terminals or HTTP.

The output protocols (tool calls, thinking, structured output, the per-request plan) are in
``engine.output``.
"""
