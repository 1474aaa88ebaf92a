"""The OpenAI-compatible HTTP app factory: `create_app(model, tokenizer, ...)` returns a FastAPI app (middleware,
errors, routes); knows nothing of sockets.

    from gptkit.serve.run import run_server               # what `gptkit serve` calls
    run_server(model, tokenizer, model_name="tiny", port=8000, engine_config=EngineConfig(max_batch=16))

    app = create_app(model, tokenizer, model_name="tiny")  # the ASGI app alone (run_server serves it)

The server's parts: this module builds the app (the lifespan that starts and stops the engine, the
API-key and body-size middleware, request metrics, the OpenAI-shaped error handlers); `state` holds
what the routes share (`ServerState`: model, tokenizer, engine, metrics, request helpers; `APIError`);
`routes/` has the endpoints, one module per group (system, models, tokenize, completions, chat); and
`streaming` is the one server-sent-events writer of both streaming endpoints.

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (OpenAI's shapes, with
vLLM's extras top_k, repetition_penalty, ignore_eos, stop_token_ids), POST /tokenize, POST /detokenize,
GET /tokenizer_info (vLLM's shapes), GET /health, GET /metrics (Prometheus), GET /openapi.json,
POST /v1/moderations (OpenAI's shape; `routes/moderations`), and GET / (the browser chat page of
`gptkit.serve.web`, with its chat.js and chat.css; not in the OpenAPI schema, open without the API key).

How a request runs: the handler (async, on the event loop) validates it, turns each prompt into
token ids and submits one `Engine` request per prompt (a request with n samples takes n rows of the
running batch); the engine's worker thread decodes every running row together and hands text back to
the event loop, where the handler builds the JSON response or the server-sent events of a stream.
A client that disconnects cancels its requests, so their rows leave the batch at the next step.

Choices of this server, where OpenAI's API leaves room:
- Context: a prompt plus an explicit max_tokens beyond the model's context is a 400 that names both
  lengths (never silently clamped). Without max_tokens, completions default to 16 tokens (OpenAI's
  default) and chat to the rest of the context, either way at most what fits.
- echo=true prepends the prompt to each choice's text; with logprobs it also returns the prompt
  tokens' log-probabilities (the first one null), computed by scoring the prompt in one forward
  pass. max_tokens=0 is allowed only with echo: the choice is then the prompt alone
  (finish_reason "length", no completion tokens), which is how lm-evaluation-harness-style clients
  score text. A token's text in `tokens` is `tokenizer.decode([id])`.
- Completions' top_logprobs hold the `logprobs` most likely tokens plus the chosen one (as vLLM);
  log-probabilities are clamped at -9999 so the JSON stays finite.
- Chat uses the chat template resolved at start: "tokens" (role tokens of gptkit tokenizers),
  "plain" (text), or "auto" (tokens when the tokenizer has them). The reply ends at the template's
  end-of-turn token (see `gptkit.chat_format`), as `gptkit chat` does locally.
- Images and audio (a multimodal checkpoint, `create_app(..., multimodal=)`): user messages of
  /v1/chat/completions may hold OpenAI's image_url parts (data URLs only: the server fetches nothing) and
  input_audio parts; each becomes the checkpoint's media tokens where the part was, through the path
  `LLM.chat` takes (`gptkit.chat_format.content_parts`, `gptkit.api.LLM.chat_prompt`). A part's decoded
  payload over `max_media_bytes` is a 413; a remote URL, a malformed data URL or undecodable media (the
  error names the part, e.g. messages[0].content[1]), media in system or assistant messages, media for a
  text-only or cross-fusion checkpoint, the wrong modality, or media beyond the context are 400s.
  usage.prompt_tokens counts the media tokens. /tokenize takes text conversations only.
- `conditions` (a gptkit extra on both endpoints): role, tone, style, ... and if/then rules
  (`gptkit.prompting.conditions`), rendered before each text prompt, or at the top of the chat's system
  message (one is added when there is none), as `gptkit generate --conditions` does.
- Moderation (`create_app(..., guard=RequestGuard(...))`, `gptkit serve --moderation`): a flagged prompt is a
  400 with code "content_filter" (or, with a refusal message, that message as the reply, finish_reason
  "content_filter"); flagged output ends where the flagged span starts, with finish_reason "content_filter",
  streamed or not (a stream holds back the undecided last words, so no flagged text is ever sent), and only that
  completion stops: the others in the batch go on. A system prompt (`system_prompt=`) opens every chat that has
  no system message of its own.
- Errors are OpenAI-shaped, {"error": {"message", "type", "param", "code"}}: 400 for invalid
  requests (malformed JSON and wrong types included), 401 bad or missing API key, 404 unknown model,
  413 body too large, 429 queue full, 503 engine stopped, 504 request timeout, 500 anything else
  (logged; the server stays up). An error in the middle of a stream arrives as an event holding
  {"error": {...}}, followed by [DONE].
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptkit.errors import GptkitError
from gptkit.finetune.multimodal import MultimodalModel
from gptkit.models.gpt import GPT
from gptkit.safety.policy import RequestGuard
from gptkit.inference.embedding import EmbeddingStyle
from gptkit.serve.engine import EngineConfig, EngineStopped, QueueFull, RequestTimeout
from gptkit.serve.metrics import Metrics
from gptkit.serve.routes import chat, completions, embeddings, models, moderations, system, tokenize
from gptkit.serve.state import DEFAULT_MAX_MEDIA_BYTES, APIError, ServerState, error_body, param_of
from gptkit.serve.web import PATHS as CHAT_PAGE_PATHS
from gptkit.serve.web import chat_page_routes
from gptkit.tokenizer import Tokenizer
from gptkit.version import __version__

logger = logging.getLogger("gptkit.serve")

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (1 MiB); larger ones get 413."""
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")
ROUTES = (system, models, tokenize, completions, chat, embeddings, moderations)
"""The endpoint modules, each with `register(app, state)`, in the order of the OpenAPI schema."""


# --- the app ---------------------------------------------------------------------------------------------

def create_app(model: GPT, tokenizer: Tokenizer, *, model_name: str = "gptkit",
               engine_config: EngineConfig | None = None, api_key: str | None = None,
               max_body_bytes: int | None = None, chat_template: str = "auto",
               multimodal: MultimodalModel | None = None, max_media_bytes: int | None = None,
               guard: RequestGuard | None = None, system_prompt: str | None = None,
               embedding_style: EmbeddingStyle | None = None) -> FastAPI:
    """A FastAPI app serving `model` with an OpenAI-compatible API; its `Engine` runs during the app's lifespan.

    guard: what to moderate (`gptkit.safety.policy.RequestGuard`: prompts, output or both, and whether a flagged
    prompt gets a 400 or a refusal message); system_prompt: opens every chat without a system message;
    embedding_style: how /v1/embeddings pools and writes text (an embedding fine-tune's `LLM.embedding_style`).

    api_key: when set, /v1/*, /tokenize, /detokenize and /tokenizer_info require `Authorization: Bearer KEY`
    (/health, /metrics and the OpenAPI docs stay open). chat_template: "auto", "tokens" or "plain".
    multimodal: for a multimodal checkpoint, the model around `model` (`LLM.load(...).multimodal`): chat then
    takes its media; max_media_bytes: the largest decoded payload of one media part (default 8 MiB);
    max_body_bytes: default 1 MiB, plus (with `multimodal`) room for one media part of max_media_bytes in base64.
    `app.state.engine` is the engine (for its stats); `app.state.gptkit` the server's shared state.
    """
    if max_media_bytes is None:
        max_media_bytes = DEFAULT_MAX_MEDIA_BYTES
    server = ServerState(model, tokenizer, model_name=model_name, engine_config=engine_config or EngineConfig(),
                         chat_template=chat_template, multimodal=multimodal, max_media_bytes=max_media_bytes,
                         guard=guard, system_prompt=system_prompt, embedding_style=embedding_style)
    if max_body_bytes is None:
        max_body_bytes = default_max_body_bytes(multimodal is not None, max_media_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        logger.info("serving %s (%d layers, context %d%s) with batch %d, queue %d, chat template %s",
                    model_name, model.config.n_layer, server.block,
                    f", {multimodal.config.modality} input" if multimodal is not None else "",
                    server.config.max_batch, server.config.max_queue,
                    server.template if server.chat_error is None else "none")
        if guard is not None:
            logger.info("moderation: %s", guard.describe())
        try:
            yield
        finally:
            await asyncio.to_thread(server.stop)

    app = FastAPI(title="gptkit", version=__version__, lifespan=lifespan,
                  description="An OpenAI-compatible API over a gptkit model: completions, chat completions, "
                              "tokenization, health and Prometheus metrics. Errors are OpenAI-shaped "
                              "(`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`).")
    app.state.gptkit = server
    app.state.engine = server.engine
    _add_error_handlers(app)
    for routes in ROUTES:
        routes.register(app, server)
    # The browser chat page and its assets: outside PROTECTED_PREFIXES, so they load without the API key (the
    # page then sends the key its user types in with each /v1 call), and outside the OpenAPI schema.
    app.include_router(chat_page_routes(f"gptkit chat · {model_name}"))

    endpoints = {route.path for route in app.routes if "{" not in getattr(route, "path", "{")}
    endpoints |= set(CHAT_PAGE_PATHS)  # an included router's routes need not be listed in app.routes
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics, endpoints=endpoints)
    return app


def default_max_body_bytes(multimodal: bool, max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> int:
    """1 MiB of JSON, plus for a multimodal checkpoint one media part of `max_media_bytes` as base64 (4/3 larger)."""
    return DEFAULT_MAX_BODY_BYTES + (-(-max_media_bytes // 3) * 4 if multimodal else 0)


# --- errors ----------------------------------------------------------------------------------------------

def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answered OpenAI-shaped: the server's own, FastAPI's validation and HTTP errors, the
    engine's (queue full, timeout, stopped), gptkit's validation errors, and anything unexpected (500)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = e.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "")
            return error_response(400, f"the request body is not valid JSON{': ' + detail if detail else ''}")
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if not loc:  # no body, or not a JSON object (which includes a body sent without a JSON content type)
            return error_response(400, "the request body must be a JSON object, sent with "
                                       "'Content-Type: application/json'")
        # Unions (e.g. prompt) report one problem per alternative; name the field once.
        where = ".".join(x for x in loc if not re.fullmatch(r"(list|str|int)\[.*|str|int|float|bool", x))
        messages = sorted({p.get("msg", "") for p in problems
                           if [str(x) for x in p.get("loc", ()) if x != "body"][:1] == loc[:1]})
        param = loc[0] if loc else None
        text = f"{where or 'body'}: {'; or '.join(messages[:3])}"
        return error_response(400, f"invalid request: {text}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"{e.detail}: {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(e.status_code, message, kind, headers=getattr(e, "headers", None))

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, e: QueueFull) -> JSONResponse:
        return error_response(429, str(e), "rate_limit_error", code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(RequestTimeout)
    async def _timeout(request: Request, e: RequestTimeout) -> JSONResponse:
        return error_response(504, str(e), "timeout_error", code="request_timeout")

    @app.exception_handler(EngineStopped)
    async def _stopped(request: Request, e: EngineStopped) -> JSONResponse:
        return error_response(503, str(e), "service_unavailable", code="engine_stopped")

    @app.exception_handler(GptkitError)
    async def _gptkit_error(request: Request, e: GptkitError) -> JSONResponse:
        return error_response(400, str(e), param=param_of(str(e)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        # The traceback is logged by the ASGI server (Starlette re-raises after this answer is sent).
        logger.error("unexpected error answering %s %s: %r", request.method, request.url.path, e)
        return error_response(500, "internal server error (see the server log)", "server_error")


# --- middleware ----------------------------------------------------------------------------------------

async def _send_json(send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class GuardMiddleware:
    """API key (Authorization: Bearer KEY on /v1/*, /tokenize, /detokenize, /tokenizer_info) and body size.

    A body larger than `max_body_bytes` (by its Content-Length or as it streams in) gets 413. The body
    is read here and handed on whole, so the size limit holds for chunked uploads too; reading continues
    (and is thrown away) up to 16x the limit so that the client sees the 413 rather than a reset.
    """

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope["headers"])
        if self.api_key is not None and path.startswith(PROTECTED_PREFIXES) and scope["method"] != "OPTIONS":
            supplied = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = supplied.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                message = ("missing API key: send it as 'Authorization: Bearer KEY'" if not supplied
                           else "incorrect API key")
                await _send_json(send, 401, error_body(message, "invalid_request_error", code="invalid_api_key"),
                                 [(b"www-authenticate", b"Bearer")])
                return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        too_large = error_body(f"the request body exceeds the server's limit of {limit} bytes",
                               "invalid_request_error", code="request_too_large")
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > 16 * limit:
            await _send_json(send, 413, too_large, [(b"connection", b"close")])
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size <= limit:
                chunks.append(body)
            elif size > 16 * limit:
                break
            more = message.get("more_body", False)
        if size > limit:
            await _send_json(send, 413, too_large, [(b"connection", b"close")])
            return
        whole = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()  # later calls: wait for the disconnect

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Counts every HTTP request by endpoint and status (unknown paths count as endpoint "other")."""

    def __init__(self, app, *, metrics: Metrics, endpoints: set[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    def _endpoint(self, path: str) -> str:
        if path in self.endpoints:
            return path
        if path.startswith("/v1/models/"):
            return "/v1/models/{model}"
        return "other"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        except Exception:
            status = status or 500
            raise
        finally:
            self.metrics.requests.inc(1, self._endpoint(scope["path"]), str(status or 499))
