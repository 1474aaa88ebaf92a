"""Serving: the continuous-batching engine and the OpenAI-compatible HTTP server (`gptkit serve`).

    from gptkit.serve import Engine, EngineConfig, create_app
    app = create_app(model, tokenizer, model_name="tiny", engine_config=EngineConfig(max_batch=16))

Names are imported on first use, so `gptkit.serve.client` (an HTTP client) loads without torch, and
the engine without the server's dependencies (FastAPI, uvicorn).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "engine", "EngineConfig": "engine", "EngineStats": "engine", "EngineStopped": "engine",
    "QueueFull": "engine", "RequestHandle": "engine", "RequestStats": "engine", "RequestTimeout": "engine",
    "create_app": "app", "Metrics": "metrics",
}
__all__ = ["Engine", "EngineConfig", "EngineStats", "EngineStopped", "Metrics", "QueueFull", "RequestHandle",
           "RequestStats", "RequestTimeout", "create_app"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"gptkit.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'gptkit.serve' has no attribute {name!r}")
