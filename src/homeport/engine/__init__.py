"""Running models: llama.cpp, the batching scheduler, model lifecycle, templates, output parsing."""
