"""gptkit: a complete, readable GPT system in PyTorch."""

from gptkit.config import PRESETS, ModelConfig
from gptkit.errors import GptkitError
from gptkit.model import GPT, KVCache
from gptkit.tokenizer import Tokenizer

__all__ = ["GPT", "GptkitError", "KVCache", "ModelConfig", "PRESETS", "Tokenizer"]
__version__ = "0.1.0"
