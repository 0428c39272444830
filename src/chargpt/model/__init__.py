"""The models and generation: GPT, the lecture's model, the KV-cache engine, the numpy decoder, sampling, attention maps."""
