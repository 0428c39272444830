"""`chargpt serve`: the local page and the OpenAI-compatible API."""
