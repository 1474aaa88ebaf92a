"""gptkit: a complete, readable GPT system in PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562), so `import gptkit.data...` in a tokenising worker process
# does not pay for importing torch and the whole package.
_EXPORTS = {
    "GPT": "gptkit.model", "KVCache": "gptkit.model", "LLM": "gptkit.api", "ModelConfig": "gptkit.config",
    "PRESETS": "gptkit.config", "GptkitError": "gptkit.errors", "SamplingParams": "gptkit.generation",
    "generate": "gptkit.generation", "Tokenizer": "gptkit.tokenizer",
}

__all__ = ["GPT", "GptkitError", "KVCache", "LLM", "ModelConfig", "PRESETS", "SamplingParams", "Tokenizer",
           "generate"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gptkit' has no attribute {name!r}")


if TYPE_CHECKING:
    from gptkit.api import LLM
    from gptkit.config import PRESETS, ModelConfig
    from gptkit.errors import GptkitError
    from gptkit.generation import SamplingParams, generate
    from gptkit.model import GPT, KVCache
    from gptkit.tokenizer import Tokenizer
