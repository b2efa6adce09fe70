"""``chat serve``: Ollama's HTTP API and an OpenAI-compatible one, on the in-process engine."""
