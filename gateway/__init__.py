"""polyhead gateway: routes requests by model name to heads; OpenAI-style embeddings; API keys."""
