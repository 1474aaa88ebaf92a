"""Data: bundled corpora, `gptkit prepare` (text -> token files) and the memory-mapped `TokenDataset`.

The prepare function lives at `gptkit.data.prepare.prepare`; it is not re-exported here because a
function named `prepare` would shadow the `gptkit.data.prepare` module of the same name.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so a tokenising worker (gptkit.data.parallel) starts without torch.
_EXPORTS = {"TokenDataset": "gptkit.data.dataset", "bundled_corpora": "gptkit.data.prepare",
            "bundled_corpus_path": "gptkit.data.prepare"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gptkit.data' has no attribute {name!r}")
