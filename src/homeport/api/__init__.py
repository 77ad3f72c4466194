"""The HTTP surface: Ollama (/api) and OpenAI (/v1) routes, request schemas, error mapping."""
