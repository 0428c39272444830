"""chargpt: train, track and sample small character-level GPT language models."""

__version__ = "0.1.0"

from .api import Run, compare, load, load_artifact, prepare, train
from .batch import get_batch
from .config import PRESETS, Config, TrainConfig, get_preset
from .data import Dataset, load_dataset
from .engine import Engine, KVCache
from .evaluate import bigram_optimum, estimate_loss, full_pass_loss
from .model import GPT, BigramLanguageModel, ModelConfig, build_model
from .tokenizer import CharTokenizer

__all__ = ["prepare", "train", "load", "compare", "load_artifact", "Run", "Dataset", "CharTokenizer", "get_batch",
           "load_dataset", "BigramLanguageModel", "GPT", "ModelConfig", "build_model", "Config", "TrainConfig",
           "PRESETS", "get_preset", "Engine", "KVCache", "estimate_loss", "full_pass_loss", "bigram_optimum"]
