"""chargpt: train, track and sample small character-level GPT language models."""

__version__ = "0.1.0"

# Each name is imported from its module on first use (PEP 562), so that `import chargpt` (and with it every
# `chargpt --help` or usage error) does not wait for torch.
_HOMES = {
    "library": ["prepare", "train", "sweep", "load", "compare", "load_artifact", "Run"],
    "data.batch": ["get_batch"],
    "config": ["PRESETS", "Config", "TrainConfig", "ModelConfig", "get_preset"],
    "data.dataset": ["Dataset", "load_dataset"],
    "model.engine": ["Engine", "KVCache"],
    "training.evaluate": ["estimate_loss", "full_pass_loss", "bigram_optimum"],
    "model.gpt": ["GPT", "BigramLanguageModel", "build_model"],
    "data.tokenizer": ["CharTokenizer"],
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'chargpt' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
