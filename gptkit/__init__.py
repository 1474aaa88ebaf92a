"""gptkit: a complete, readable GPT system in PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gptkit.version import __version__  # noqa: F401  (gptkit.__version__)

# Names are imported on first use (PEP 562), so `import gptkit.data...` in a tokenising worker process
# does not pay for importing torch and the whole package.
_EXPORTS = {
    "GPT": "gptkit.models.gpt", "KVCache": "gptkit.models.gpt", "LLM": "gptkit.api", "load": "gptkit.api", "ModelConfig": "gptkit.config",
    "PRESETS": "gptkit.config", "GptkitError": "gptkit.errors", "SamplingParams": "gptkit.inference.sampling",
    "generate": "gptkit.inference.generate", "Tokenizer": "gptkit.tokenizer",
    "text_style": "gptkit.data.moderation_data", "english_mix_style": "gptkit.data.moderation_data",
}

__all__ = ["GPT", "GptkitError", "KVCache", "LLM", "ModelConfig", "PRESETS", "SamplingParams", "Tokenizer", "load",
           "generate", "text_style", "english_mix_style"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gptkit' has no attribute {name!r}")


if TYPE_CHECKING:
    from gptkit.api import LLM, load
    from gptkit.config import PRESETS, ModelConfig
    from gptkit.data.moderation_data import english_mix_style, text_style
    from gptkit.errors import GptkitError
    from gptkit.inference.generate import generate
    from gptkit.inference.sampling import SamplingParams
    from gptkit.models.gpt import GPT, KVCache
    from gptkit.tokenizer import Tokenizer
