"""chargpt: train, track and sample small character-level GPT language models."""

__version__ = "0.1.0"

from .batch import get_batch
from .config import PRESETS, Config, TrainConfig, get_preset
from .data import load_dataset, prepare
from .engine import Engine, KVCache
from .evaluate import bigram_optimum, estimate_loss, full_pass_loss
from .model import GPT, BigramLanguageModel, ModelConfig, build_model
from .tokenizer import CharTokenizer

__all__ = ["CharTokenizer", "get_batch", "prepare", "load_dataset", "BigramLanguageModel", "GPT", "ModelConfig",
           "build_model", "Config", "TrainConfig", "PRESETS", "get_preset", "Engine", "KVCache",
           "estimate_loss", "full_pass_loss", "bigram_optimum"]
