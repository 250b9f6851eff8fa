"""Developer tools: stub generation, fixtures, dataset embeddings, deploy validation."""
