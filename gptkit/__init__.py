"""gptkit: a complete, readable GPT system in PyTorch."""

from gptkit.api import LLM
from gptkit.config import PRESETS, ModelConfig
from gptkit.errors import GptkitError
from gptkit.generation import SamplingParams, generate
from gptkit.model import GPT, KVCache
from gptkit.tokenizer import Tokenizer

__all__ = ["GPT", "GptkitError", "KVCache", "LLM", "ModelConfig", "PRESETS", "SamplingParams", "Tokenizer",
           "generate"]
__version__ = "0.1.0"
