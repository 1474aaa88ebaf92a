"""The OpenAI-compatible HTTP server: `create_app(model, tokenizer, ...)` returns a FastAPI app.

    app = create_app(model, tokenizer, model_name="tiny", engine_config=EngineConfig(max_batch=16))
    uvicorn.run(app, host="127.0.0.1", port=8000)          # what `gptkit serve` does

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (OpenAI's shapes, with
vLLM's extras top_k, repetition_penalty, ignore_eos, stop_token_ids), POST /tokenize, POST /detokenize,
GET /tokenizer_info (vLLM's shapes), GET /health, GET /metrics (Prometheus), GET /openapi.json.

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
  end-of-turn token (see `gptkit.data.chat`), as `gptkit chat` does locally.
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
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptkit.data.chat import ROLES, chat_stop_token_ids, jinja_chat_template, render_chat
from gptkit.errors import GptkitError
from gptkit.inference.decode import Completion
from gptkit.inference.generate import GenerationEvent
from gptkit.inference.sampling import MAX_LOGPROBS, SamplingParams, TokenLogprob
from gptkit.inference.scoring import prompt_logprobs
from gptkit.models.gpt import GPT
from gptkit.serve.client import resolve_chat_template
from gptkit.serve.engine import Engine, EngineConfig, EngineStopped, QueueFull, RequestHandle, RequestTimeout
from gptkit.serve.metrics import CONTENT_TYPE, Metrics
from gptkit.serve.schemas import (ChatChoice, ChatChoiceLogprobs, ChatCompletionChunk, ChatCompletionRequest,
                                  ChatCompletionResponse, ChatMessageIn, ChatMessageOut, ChatStreamChoice,
                                  CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
                                  DeltaMessage, DetokenizeRequest, DetokenizeResponse, ErrorResponse, Health,
                                  ModelCard, ModelList, TokenizeRequest, TokenizeResponse, TokenizerInfo,
                                  TokenLogprobOut, TopLogprob, Usage)
from gptkit.tokenizer import CHAT_TOKENS, Tokenizer
from gptkit.version import __version__

logger = logging.getLogger("gptkit.serve")

DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (1 MiB); larger ones get 413."""
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MIN_LOGPROB = -9999.0  # as vLLM: JSON has no -Infinity
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")
_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "presence_penalty",
                    "frequency_penalty", "seed", "n", "stop", "logprobs", "stop_token_ids")


class APIError(Exception):
    """An error answered with an OpenAI-shaped body and this status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


def _param_of(message: str) -> str | None:
    """The request field a gptkit validation message is about (it starts with the field's name)."""
    first = message.split(" ", 1)[0]
    return first if first in _SAMPLING_FIELDS else None


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


# --- token text and bytes ------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte's printable stand-in character."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _uses_byte_level(tokenizer: Tokenizer) -> bool:
    decoder = json.loads(tokenizer.hf.to_str()).get("decoder") or {}
    stack = [decoder]
    while stack:
        d = stack.pop()
        if d.get("type") == "ByteLevel":
            return True
        stack.extend(d.get("decoders") or [])
    return False


@dataclass
class _Prompt:
    ids: list[int]
    text: str
    """The prompt as text: the request's string, or the decoded token ids."""


# --- the server's state --------------------------------------------------------------------------------

class _Server:
    """What the routes share: the model, tokenizer, engine, metrics and request helpers."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, model_name: str, engine_config: EngineConfig,
                 chat_template: str) -> None:
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.engine = Engine(model, tokenizer, engine_config)
        self.config = self.engine.config
        self.block = model.config.block_size
        self.vocab = model.config.vocab_size
        self.metrics = Metrics()
        self.created = int(time.time())
        self.template = resolve_chat_template(tokenizer, chat_template)  # type: ignore[arg-type]
        self.chat_error: str | None = None
        if self.template == "tokens" and any(tokenizer.token_to_id(t) is None for t in CHAT_TOKENS):
            self.chat_error = (f"this model's tokenizer has no chat role tokens ({' '.join(CHAT_TOKENS)}), so the "
                               "'tokens' chat template cannot be used: restart the server with --chat-template "
                               "plain (a text template, 'User: ...\\nAssistant: ...') or auto")
        self.byte_level = _uses_byte_level(tokenizer)
        self.tokenizer_kind = tokenizer.describe()["kind"]
        self.added = {i: t.content for i, t in tokenizer.hf.get_added_tokens_decoder().items()}
        self._token_strs: dict[int, str] = {}
        self._token_bytes: dict[int, list[int]] = {}
        self.executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---
    def start(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptkit-score")
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None

    # --- checks ---
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model {name!r} does not exist: this server serves {self.model_name!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")

    def check_ids(self, ids: Sequence[int], param: str) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab]
        if bad:
            raise APIError(400, f"token ids must be in [0, {self.vocab}) (the model's vocabulary); got {bad[:5]}",
                           param=param)

    def check_n(self, n: int) -> None:
        if n < 1 or n > self.config.max_batch:
            raise APIError(400, f"n must be between 1 and {self.config.max_batch} (the server's batch size), got {n}",
                           param="n")

    def fit_context(self, prompt_len: int, max_tokens: int, *, explicit: bool, param: str = "prompt") -> int:
        """max_tokens checked against the context (or, when not explicit, reduced to what fits)."""
        block = self.block
        if max_tokens == 0:  # echo only: the prompt is scored, nothing is generated
            if prompt_len > block:
                raise APIError(400, f"the prompt is {prompt_len} tokens, longer than the model's context length of "
                                    f"{block} tokens", param=param, code="context_length_exceeded")
            return 0
        if prompt_len >= block:
            raise APIError(400, f"the prompt is {prompt_len} tokens but the model's context length is {block} tokens, "
                                f"which leaves no room for a completion: shorten the prompt to at most {block - 1} "
                                "tokens", param=param, code="context_length_exceeded")
        if prompt_len + max_tokens > block:
            if explicit:
                raise APIError(400, f"this model's context length is {block} tokens, but {prompt_len + max_tokens} "
                                    f"were requested ({prompt_len} in the prompt + {max_tokens} max_tokens): reduce "
                                    "the prompt or max_tokens", param="max_tokens", code="context_length_exceeded")
            return block - prompt_len
        return max_tokens

    def sampling_params(self, body: Any, *, max_tokens: int, logprobs: int | None,
                        stop_token_ids: list[int] | None = None, extra_stop: Sequence[str] = ()) -> SamplingParams:
        stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
        stop = [s for s in stop if s] + [s for s in extra_stop if s not in stop]
        default_stop = stop_token_ids if stop_token_ids is not None else [self.tokenizer.eos_id]
        ids = [t for t in default_stop if t is not None] + list(body.stop_token_ids or [])
        self.check_ids(body.stop_token_ids or [], "stop_token_ids")
        top_k = None if body.top_k in (None, 0, -1) else body.top_k
        try:
            return SamplingParams(
                max_tokens=max_tokens, n=body.n, stop=stop, seed=body.seed, logprobs=logprobs,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p, top_k=top_k,
                repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
                presence_penalty=0.0 if body.presence_penalty is None else body.presence_penalty,
                frequency_penalty=0.0 if body.frequency_penalty is None else body.frequency_penalty,
                stop_token_ids=ids, ignore_eos=body.ignore_eos)
        except GptkitError as e:
            raise APIError(400, str(e), param=_param_of(str(e))) from None

    def completion_prompts(self, prompt: Any) -> list[_Prompt]:
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif not prompt:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        elif isinstance(prompt[0], int):
            items = [prompt]
        else:
            items = list(prompt)
        prompts = []
        for item in items:
            if isinstance(item, str):
                ids, text = self.tokenizer.encode(item), item
            else:
                ids = list(item)
                self.check_ids(ids, "prompt")
                text = self.tokenizer.decode(ids)
            prompts.append(_Prompt(ids or self._start_ids(), text))
        return prompts

    def _start_ids(self) -> list[int]:
        """An empty prompt conditions on BOS (else EOS), as `gptkit.inference` does."""
        start = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
        if start is None:
            raise APIError(400, "the prompt is empty and the tokenizer has no BOS/EOS token to start from",
                           param="prompt")
        return [start]

    def chat_messages(self, messages: Sequence[ChatMessageIn]) -> list[dict[str, str]]:
        if not messages:
            raise APIError(400, "messages must hold at least one message", param="messages")
        out = []
        for i, message in enumerate(messages, start=1):
            role = "system" if message.role == "developer" else message.role
            if role not in ROLES:
                raise APIError(400, f"message {i} has role {message.role!r}; this server takes system (or developer), "
                                    "user and assistant messages", param="messages")
            content = message.content
            if isinstance(content, list):
                if any(part.type != "text" for part in content):
                    raise APIError(400, f"message {i}: only text content parts are supported", param="messages")
                content = "".join(part.text or "" for part in content)
            if content is None:
                raise APIError(400, f"message {i} ({role}) has no content", param="messages")
            out.append({"role": role, "content": content})
        return out

    def render_chat(self, messages: Sequence[ChatMessageIn], add_generation_prompt: bool = True) -> list[int]:
        if self.chat_error is not None:
            raise APIError(400, self.chat_error, param="messages", code="chat_template_unavailable")
        conversation = self.chat_messages(messages)
        try:
            return render_chat(conversation, self.tokenizer, add_generation_prompt=add_generation_prompt,
                               template=self.template).ids  # type: ignore[arg-type]
        except GptkitError as e:
            raise APIError(400, str(e), param="messages") from None

    # --- token text ---
    def token_str(self, token_id: int) -> str:
        text = self._token_strs.get(token_id)
        if text is None:
            text = self._token_strs[token_id] = self.tokenizer.decode([token_id])
        return text

    def token_bytes(self, token_id: int) -> list[int]:
        """The token's own bytes (a byte-level or byte-fallback token may hold part of a character)."""
        cached = self._token_bytes.get(token_id)
        if cached is not None:
            return cached
        token = self.tokenizer.id_to_token(token_id)
        if token is None or token_id in self.added:
            value = list(self.token_str(token_id).encode())
        elif (match := _BYTE_TOKEN.fullmatch(token)) is not None:
            value = [int(match.group(1), 16)]
        elif self.byte_level and all(c in _BYTE_OF_CHAR for c in token):
            value = [_BYTE_OF_CHAR[c] for c in token]
        else:
            value = list(self.token_str(token_id).encode())
        self._token_bytes[token_id] = value
        return value

    def completion_logprobs(self, token_ids: Sequence[int], logprobs: Sequence[TokenLogprob | None],
                            offset: int) -> CompletionLogprobs:
        """OpenAI's legacy format for these tokens; text offsets count from `offset`."""
        tokens, values, tops, offsets = [], [], [], []
        for token_id, lp in zip(token_ids, logprobs):
            token = self.token_str(token_id)
            tokens.append(token)
            offsets.append(offset)
            offset += len(token)
            if lp is None:
                values.append(None)
                tops.append(None)
                continue
            value = max(lp.logprob, MIN_LOGPROB)
            values.append(value)
            top = {}
            for alt_id, alt in lp.top:
                top.setdefault(self.token_str(alt_id), max(alt, MIN_LOGPROB))
            top.setdefault(token, value)  # the chosen token is always there, as vLLM does
            tops.append(top)
        return CompletionLogprobs(tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets)

    def chat_logprobs(self, logprobs: Sequence[TokenLogprob]) -> ChatChoiceLogprobs:
        content = []
        for lp in logprobs:
            top = [TopLogprob(token=self.token_str(t), logprob=max(v, MIN_LOGPROB), bytes=self.token_bytes(t))
                   for t, v in lp.top]
            content.append(TokenLogprobOut(token=self.token_str(lp.token_id), logprob=max(lp.logprob, MIN_LOGPROB),
                                           bytes=self.token_bytes(lp.token_id), top_logprobs=top))
        return ChatChoiceLogprobs(content=content)

    # --- running requests ---
    async def score(self, prompts: Sequence[Sequence[int]], top: int) -> list[list[TokenLogprob | None]]:
        """Prompt tokens' logprobs, computed on the scoring thread (the event loop stays free)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, prompt_logprobs, self.model, prompts, top)

    def submit(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams]) -> list[RequestHandle]:
        """One engine request per prompt; if one is refused (queue full), the others are cancelled."""
        if not self.engine.alive:
            raise EngineStopped("the engine is not running")
        loop = asyncio.get_running_loop()
        handles: list[RequestHandle] = []
        try:
            for ids, p in zip(prompts, params):
                handles.append(self.engine.submit(ids, p, loop=loop))
        except BaseException:
            for handle in handles:
                handle.cancel()
            raise
        return handles


def _request_error(e: Exception) -> Exception:
    """The error to answer for a request that failed in the engine: a timeout or stop as it is, and an
    engine failure (the engine wraps it in a GptkitError) as a 500, not as the user's fault."""
    if isinstance(e, (RequestTimeout, EngineStopped)) or not isinstance(e, GptkitError):
        return e
    logger.error("a request failed in the engine: %s", e)
    return APIError(500, "the engine failed while generating (see the server log)", type="server_error")


async def _merge(handles: Sequence[RequestHandle]) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """(request number, event) from all handles as they come; raises the first request's error."""
    if len(handles) == 1:
        try:
            async for event in handles[0]:
                yield 0, event
        except Exception as e:  # noqa: BLE001 - re-raised as what the client should see
            converted = _request_error(e)
            if converted is e:
                raise
            raise converted from e
        return
    events: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, handle: RequestHandle) -> None:
        try:
            async for event in handle:
                events.put_nowait((i, event, None))
            events.put_nowait((i, None, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            events.put_nowait((i, None, e))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(handles)
        while remaining:
            i, event, error = await events.get()
            if error is not None:
                converted = _request_error(error)
                raise converted from (None if converted is error else error)
            if event is None:
                remaining -= 1
            else:
                yield i, event
    finally:
        for task in tasks:
            task.cancel()


@asynccontextmanager
async def _cancel_on_disconnect(request: Request, handles: Sequence[RequestHandle]):
    """While the body runs, a client that goes away cancels `handles` (their rows leave the batch)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                for handle in handles:
                    handle.cancel()
                return

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()


def _stream_error(e: BaseException) -> str:
    if isinstance(e, APIError):
        body = error_body(e.message, e.type, e.param, e.code)
    elif isinstance(e, RequestTimeout):
        body = error_body(str(e), "timeout_error", code="request_timeout")
    elif isinstance(e, EngineStopped):
        body = error_body(str(e), "service_unavailable", code="engine_stopped")
    elif isinstance(e, GptkitError):
        body = error_body(str(e), "invalid_request_error")
    else:
        logger.exception("error while streaming a response", exc_info=e)
        body = error_body("internal server error (see the server log)", "server_error")
    return _sse(json.dumps(body))


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


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


# --- the app ---------------------------------------------------------------------------------------------

def create_app(model: GPT, tokenizer: Tokenizer, *, model_name: str = "gptkit",
               engine_config: EngineConfig | None = None, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, chat_template: str = "auto") -> FastAPI:
    """A FastAPI app serving `model` with an OpenAI-compatible API; its `Engine` runs during the app's lifespan.

    api_key: when set, /v1/*, /tokenize, /detokenize and /tokenizer_info require `Authorization: Bearer KEY`
    (/health, /metrics and the OpenAPI docs stay open). chat_template: "auto", "tokens" or "plain".
    `app.state.engine` is the engine (for its stats); `app.state.gptkit` the server's shared state.
    """
    server = _Server(model, tokenizer, model_name=model_name, engine_config=engine_config or EngineConfig(),
                     chat_template=chat_template)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        logger.info("serving %s (%d layers, context %d) with batch %d, queue %d, chat template %s",
                    model_name, model.config.n_layer, server.block, server.config.max_batch,
                    server.config.max_queue, server.template if server.chat_error is None else "none")
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
    errors = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 500, 503, 504)}
    streaming = {200: {"content": {"text/event-stream": {}},
                       "description": "JSON, or with stream=true server-sent events (`data: {...}`, then "
                                      "`data: [DONE]`)."}}

    # --- errors ---
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
        return error_response(400, str(e), param=_param_of(str(e)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        # The traceback is logged by the ASGI server (Starlette re-raises after this answer is sent).
        logger.error("unexpected error answering %s %s: %r", request.method, request.url.path, e)
        return error_response(500, "internal server error (see the server log)", "server_error")

    # --- service ---
    @app.get("/health", response_model=Health, summary="200 while the engine runs, 503 otherwise")
    async def health() -> JSONResponse:
        if server.engine.alive:
            return JSONResponse({"status": "ok", "details": None})
        return JSONResponse({"status": "unavailable", "details": {"engine": "stopped"}}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics (text format)",
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        return Response(server.metrics.render(server.engine), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelList, responses=errors)
    async def list_models() -> JSONResponse:
        return JSONResponse(ModelList(data=[_model_card()]).model_dump())

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=errors)
    async def retrieve_model(model_id: str) -> JSONResponse:
        server.check_model(model_id)
        return JSONResponse(_model_card().model_dump())

    def _model_card() -> ModelCard:
        return ModelCard(id=model_name, created=server.created, root=model_name, max_model_len=server.block)

    # --- tokenizer ---
    @app.post("/tokenize", response_model=TokenizeResponse, responses=errors)
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        server.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "pass exactly one of prompt (text) or messages (a conversation)", param="prompt")
        if body.messages is not None:
            ids = server.render_chat(body.messages, body.add_generation_prompt)
        else:
            ids = tokenizer.hf.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids
        strs = [server.token_str(i) for i in ids] if body.return_token_strs else None
        return JSONResponse(TokenizeResponse(tokens=ids, count=len(ids), max_model_len=server.block,
                                             token_strs=strs).model_dump())

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=errors)
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        server.check_model(body.model)
        server.check_ids(body.tokens, "tokens")
        return JSONResponse({"prompt": tokenizer.decode(body.tokens)})

    @app.get("/tokenizer_info", response_model=TokenizerInfo, responses=errors)
    async def tokenizer_info() -> JSONResponse:
        special = tokenizer.special
        info = TokenizerInfo(
            tokenizer_class="gptkit.tokenizer.Tokenizer", kind=server.tokenizer_kind,
            vocab_size=tokenizer.vocab_size, model_vocab_size=server.vocab,
            bos_token=special.bos, bos_token_id=tokenizer.bos_id, eos_token=special.eos,
            eos_token_id=tokenizer.eos_id, pad_token=special.pad, pad_token_id=tokenizer.pad_id,
            chat_template=None if server.chat_error else jinja_chat_template(tokenizer, server.template),
            chat_template_name=None if server.chat_error else server.template,
            model_max_length=server.block, max_model_len=server.block)
        return JSONResponse(info.model_dump())

    # --- completions ---
    @app.post("/v1/completions", response_model=CompletionResponse, responses={**errors, **streaming})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        started = time.perf_counter()
        server.check_model(body.model)
        if body.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, "best_of is not supported by this server (use n)", param="best_of")
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
        server.check_n(body.n)
        if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
            raise APIError(400, f"logprobs must be between 0 and {MAX_LOGPROBS}, got {body.logprobs}",
                           param="logprobs")
        explicit = body.max_tokens is not None
        max_tokens = body.max_tokens if explicit else COMPLETION_DEFAULT_MAX_TOKENS
        if max_tokens < 0 or (max_tokens == 0 and not body.echo):
            raise APIError(400, f"max_tokens must be at least 1 (0 is allowed only with echo=true, to score the "
                                f"prompt), got {max_tokens}", param="max_tokens")
        prompts = server.completion_prompts(body.prompt)
        if len(prompts) > 1 and len(prompts) > server.config.max_queue:
            raise APIError(400, f"{len(prompts)} prompts in one request exceed the server's queue of "
                                f"{server.config.max_queue}: send at most that many at once", param="prompt")
        budgets = [server.fit_context(len(p.ids), max_tokens, explicit=explicit) for p in prompts]
        params = [server.sampling_params(body, max_tokens=m, logprobs=body.logprobs) for m in budgets if m > 0]
        if not params:  # max_tokens=0: validate the sampling fields all the same
            server.sampling_params(body, max_tokens=1, logprobs=body.logprobs)
        echo_logprobs: list[list[TokenLogprob | None]] | None = None
        if body.echo and body.logprobs is not None:
            echo_logprobs = await server.score([p.ids for p in prompts], body.logprobs)
        handles = server.submit([p.ids for p in prompts], params) if params else []
        request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        n = body.n
        prompt_tokens = sum(len(p.ids) for p in prompts)

        def echo_part(i: int) -> tuple[str, CompletionLogprobs | None]:
            text = prompts[i].text if body.echo else ""
            if echo_logprobs is None:
                return text, None
            return text, server.completion_logprobs(prompts[i].ids, echo_logprobs[i], 0)

        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage

            def chunk(index: int, text: str, logprobs: CompletionLogprobs | None = None,
                      finish_reason: str | None = None) -> str:
                choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish_reason)
                return _sse(CompletionResponse(id=request_id, created=created, model=model_name,
                                               choices=[choice]).model_dump_json())

            async def events() -> AsyncIterator[str]:
                offsets = {}
                sent = {}
                try:
                    for i in range(len(prompts)):
                        text, logprobs = echo_part(i)
                        for j in range(n):
                            offsets[i * n + j] = len(text)
                            sent[i * n + j] = 0
                            if body.echo:
                                yield chunk(i * n + j, text, logprobs,
                                            "length" if not handles else None)
                    completion_tokens = 0
                    async for i, event in _merge(handles):
                        index = i * n + event.index
                        logprobs = None
                        if body.logprobs is not None:
                            row = handles[i].rows[event.index]
                            done = len(row.logprobs or [])
                            new = slice(sent[index], done)
                            logprobs = server.completion_logprobs(row.token_ids[new], (row.logprobs or [])[new],
                                                                  offsets[index])
                            offsets[index] += sum(len(t) for t in logprobs.tokens)
                            sent[index] = done
                        completion = event.completion
                        if completion is not None:
                            completion_tokens += len(completion.token_ids)
                        if event.text or completion is not None or (logprobs and logprobs.tokens):
                            yield chunk(index, event.text, logprobs,
                                        completion.finish_reason if completion is not None else None)
                    if include_usage:
                        yield _sse(CompletionResponse(id=request_id, created=created, model=model_name, choices=[],
                                                      usage=_usage(prompt_tokens, completion_tokens)
                                                      ).model_dump_json())
                    yield _sse("[DONE]")
                    server.metrics.observe_request(handles, prompt_tokens=prompt_tokens,
                                                   completion_tokens=completion_tokens,
                                                   e2e=time.perf_counter() - started)
                except Exception as e:  # noqa: BLE001 - the response has started: report in the stream
                    yield _stream_error(e)
                    yield _sse("[DONE]")
                finally:
                    for handle in handles:
                        handle.cancel()

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        try:
            async with _cancel_on_disconnect(request, handles):
                async for _ in _merge(handles):
                    pass
        finally:
            for handle in handles:
                handle.cancel()
        choices = []
        completion_tokens = 0
        for i in range(len(prompts)):
            text, echo_logprobs_i = echo_part(i)
            for j in range(n):
                completion: Completion | None = handles[i].completions[j] if handles else None
                logprobs = None
                if body.logprobs is not None:
                    parts = [echo_logprobs_i] if echo_logprobs_i is not None else []
                    if completion is not None:
                        parts.append(server.completion_logprobs(completion.token_ids, completion.logprobs or [],
                                                                len(text)))
                    logprobs = CompletionLogprobs(
                        tokens=[t for p in parts for t in p.tokens],
                        token_logprobs=[t for p in parts for t in p.token_logprobs],
                        top_logprobs=[t for p in parts for t in p.top_logprobs],
                        text_offset=[t for p in parts for t in p.text_offset])
                if completion is not None:
                    completion_tokens += len(completion.token_ids)
                choices.append(CompletionChoice(
                    index=i * n + j, text=text + (completion.text if completion is not None else ""),
                    logprobs=logprobs, finish_reason=completion.finish_reason if completion is not None else "length"))
        response = CompletionResponse(id=request_id, created=created, model=model_name, choices=choices,
                                      usage=_usage(prompt_tokens, completion_tokens))
        server.metrics.observe_request(handles, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                       e2e=time.perf_counter() - started)
        return Response(response.model_dump_json(), media_type="application/json")

    # --- chat completions ---
    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={**errors, **streaming})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        started = time.perf_counter()
        server.check_model(body.model)
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
        server.check_n(body.n)
        top = body.top_logprobs
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            raise APIError(400, f"top_logprobs must be between 0 and {MAX_LOGPROBS}, got {top}",
                           param="top_logprobs")
        if top and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        ids = server.render_chat(body.messages)
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if requested is not None and requested < 1:
            raise APIError(400, f"{param} must be at least 1, got {requested}", param=param)
        max_tokens = server.fit_context(len(ids), requested if requested is not None else server.block,
                                        explicit=requested is not None, param="messages")
        stop_ids = chat_stop_token_ids(tokenizer, server.template)  # type: ignore[arg-type]
        params = server.sampling_params(body, max_tokens=max_tokens, logprobs=(top or 0) if body.logprobs else None,
                                        stop_token_ids=stop_ids, extra_stop=() if stop_ids else ("\n",))
        (handle,) = server.submit([ids], [params])
        request_id, created, n = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.n

        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage

            def chunk(index: int, delta: DeltaMessage, logprobs: ChatChoiceLogprobs | None = None,
                      finish_reason: str | None = None) -> str:
                choice = ChatStreamChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
                return _sse(ChatCompletionChunk(id=request_id, created=created, model=model_name,
                                                choices=[choice]).model_dump_json())

            async def events() -> AsyncIterator[str]:
                sent = [0] * n
                completion_tokens = 0
                try:
                    for j in range(n):
                        yield chunk(j, DeltaMessage(role="assistant", content=""))
                    async for _, event in _merge([handle]):
                        j = event.index
                        logprobs = None
                        if body.logprobs:
                            row_logprobs = handle.rows[j].logprobs or []
                            done = len(row_logprobs)
                            logprobs = server.chat_logprobs(row_logprobs[sent[j]:done])
                            sent[j] = done
                        completion = event.completion
                        if completion is not None:
                            completion_tokens += len(completion.token_ids)
                        if event.text or completion is not None or (logprobs and logprobs.content):
                            yield chunk(j, DeltaMessage(content=event.text or None), logprobs,
                                        completion.finish_reason if completion is not None else None)
                    if include_usage:
                        yield _sse(ChatCompletionChunk(id=request_id, created=created, model=model_name, choices=[],
                                                       usage=_usage(len(ids), completion_tokens)).model_dump_json())
                    yield _sse("[DONE]")
                    server.metrics.observe_request([handle], prompt_tokens=len(ids),
                                                   completion_tokens=completion_tokens,
                                                   e2e=time.perf_counter() - started)
                except Exception as e:  # noqa: BLE001 - the response has started: report in the stream
                    yield _stream_error(e)
                    yield _sse("[DONE]")
                finally:
                    handle.cancel()

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        try:
            async with _cancel_on_disconnect(request, [handle]):
                async for _ in _merge([handle]):
                    pass
        finally:
            handle.cancel()
        choices = []
        completion_tokens = 0
        for j, completion in enumerate(handle.completions):
            if completion is None:  # cancelled: the client has gone
                continue
            completion_tokens += len(completion.token_ids)
            choices.append(ChatChoice(
                index=j, message=ChatMessageOut(content=completion.text), finish_reason=completion.finish_reason,
                logprobs=server.chat_logprobs(completion.logprobs or []) if body.logprobs else None))
        response = ChatCompletionResponse(id=request_id, created=created, model=model_name, choices=choices,
                                          usage=_usage(len(ids), completion_tokens))
        server.metrics.observe_request([handle], prompt_tokens=len(ids), completion_tokens=completion_tokens,
                                       e2e=time.perf_counter() - started)
        return Response(response.model_dump_json(), media_type="application/json")

    endpoints = {route.path for route in app.routes if "{" not in getattr(route, "path", "{")}
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics, endpoints=endpoints)
    return app
