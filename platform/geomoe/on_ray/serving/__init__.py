"""Ray Serve applications (the Ray layer): the gated retriever with re-ranking (issue 7) and an
OpenAI-compatible chat endpoint over a local transformers model."""
