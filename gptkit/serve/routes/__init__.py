"""The HTTP endpoints, one module per group, each with `register(app, state)`, and the OpenAPI error and
stream descriptions they share; knows nothing of the app's middleware, error handlers or lifespan.

    system       GET /health, GET /metrics
    models       GET /v1/models, GET /v1/models/{model}
    tokenize     POST /tokenize, POST /detokenize, GET /tokenizer_info
    completions  POST /v1/completions
    chat         POST /v1/chat/completions
    embeddings   POST /v1/embeddings
    moderations  POST /v1/moderations (and the input moderation of completions and chat)
"""

from __future__ import annotations

from typing import Any

from gptkit.serve.schemas import ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 500, 503, 504)}
"""The error statuses every endpoint may answer, for the OpenAPI schema."""
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}},
          "description": "JSON, or with stream=true server-sent events (`data: {...}`, then `data: [DONE]`)."}}
"""The 200 of an endpoint that can stream, for the OpenAPI schema."""
