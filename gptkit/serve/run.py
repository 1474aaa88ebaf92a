"""Running the HTTP server: the listening socket, the GIL switch interval, logging, then uvicorn.

`run_server` is what `gptkit serve` calls; use it rather than `uvicorn.run(create_app(...))`, which
serves without the switch-interval fix (see below) and cannot report the port of `port=0`.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable

from gptkit.errors import GptkitError, require
from gptkit.finetune.multimodal import MultimodalModel
from gptkit.inference.embedding import EmbeddingStyle
from gptkit.models.gpt import GPT
from gptkit.safety.policy import RequestGuard
from gptkit.serve.engine import EngineConfig
from gptkit.tokenizer import Tokenizer

# Two busy Python threads share the process: the engine (model steps) and the event loop (HTTP).
# Every small torch op releases the GIL and must take it back; with the default 5 ms switch interval
# the engine waits up to 5 ms each time the event loop holds it, so decode steps stretch.
SWITCH_INTERVAL_S = 0.0002


def listen(host: str, port: int) -> socket.socket:
    """A socket bound and listening on host:port (port 0: a free one), or a clear error.

    Bound here rather than by uvicorn, so that port 0 can be reported, and clients that connect
    before the server has started wait in the backlog instead of being refused.
    """
    require(0 <= port <= 65535, f"--port must be in 0..65535, got {port}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GptkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)
    return sock


def run_server(model: GPT, tokenizer: Tokenizer, *, model_name: str, host: str = "127.0.0.1", port: int = 8000,
               engine_config: EngineConfig | None = None, api_key: str | None = None,
               max_body_bytes: int | None = None, chat_template: str = "auto", log_level: str = "info",
               multimodal: MultimodalModel | None = None, max_media_bytes: int | None = None,
               on_listen: Callable[[str], None] | None = None, guard: RequestGuard | None = None,
               system_prompt: str | None = None, embedding_style: EmbeddingStyle | None = None) -> None:
    """Serve `model` over HTTP (the OpenAI-compatible app of `gptkit.serve.app`) until interrupted.

    multimodal, max_media_bytes (default 8 MiB), max_body_bytes (default: 1 MiB, plus room for one media part
    with `multimodal`), guard (moderation), system_prompt, embedding_style: as for `create_app`. on_listen(base_url) is called once the
    socket listens (the CLI prints the URL).
    """
    try:
        import uvicorn  # optional: the server's dependencies

        from gptkit.serve.app import create_app
    except ImportError as e:
        raise GptkitError(f"gptkit serve needs {e.name}: pip install fastapi uvicorn (or reinstall gptkit)") from None
    require(max_body_bytes is None or max_body_bytes >= 1, f"--max-body-bytes must be positive, got {max_body_bytes}")
    require(max_media_bytes is None or max_media_bytes >= 1, f"--max-media-bytes must be positive, got {max_media_bytes}")
    config = engine_config or EngineConfig()
    config.validate()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(model, tokenizer, model_name=model_name, engine_config=config, api_key=api_key,
                     max_body_bytes=max_body_bytes, chat_template=chat_template, multimodal=multimodal,
                     max_media_bytes=max_media_bytes, guard=guard, system_prompt=system_prompt,
                     embedding_style=embedding_style)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logging.getLogger("gptkit").addHandler(handler)
    logging.getLogger("gptkit").setLevel(log_level.upper())
    sock = listen(host, port)
    if on_listen is not None:
        on_listen(f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
