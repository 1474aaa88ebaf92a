"""The server's shared state (`ServerState`: model, tokenizer, engine, metrics and the request helpers the
routes share) and the OpenAI-shaped `APIError`; knows nothing of routes, middleware or the FastAPI app.

A chat with media (a multimodal checkpoint: image_url and input_audio content parts) becomes ids and input
embeddings through `gptkit.api.LLM.chat_prompt`, the path `LLM.chat` takes, run on the scoring thread so
the event loop stays free while images and audio are decoded and encoded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from fastapi import Request

from gptkit.api import LLM
from gptkit.chat_format import ROLES, MediaTooLarge, Message, has_chat_tokens, render_chat, resolve_chat_template
from gptkit.errors import GptkitError
from gptkit.finetune.multimodal import MultimodalModel
from gptkit.inference.embedding import EmbeddingStyle
from gptkit.inference.generate import GenerationEvent
from gptkit.inference.sampling import SamplingParams, TokenLogprob
from gptkit.inference.scoring import prompt_logprobs
from gptkit.models.gpt import GPT
from gptkit.prompting.conditions import render_conditions
from gptkit.safety.policy import RequestGuard
from gptkit.serve.engine import Engine, EngineConfig, EngineStopped, RequestHandle, RequestTimeout
from gptkit.serve.metrics import Metrics
from gptkit.serve.schemas import (ChatChoiceLogprobs, ChatMessageIn, CompletionLogprobs, TokenLogprobOut, TopLogprob,
                                  Usage)
from gptkit.tokenizer import CHAT_TOKENS, Tokenizer

logger = logging.getLogger("gptkit.serve")

MIN_LOGPROB = -9999.0  # as vLLM: JSON has no -Infinity
DEFAULT_MAX_MEDIA_BYTES = 8 << 20
"""Largest media payload of one content part, decoded (8 MiB); larger ones get 413."""
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


def param_of(message: str) -> str | None:
    """The request field a gptkit validation message is about (it starts with the field's name)."""
    first = message.split(" ", 1)[0]
    return first if first in _SAMPLING_FIELDS else None


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

class ServerState:
    """What the routes share: the model, tokenizer, engine, metrics and request helpers."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, model_name: str, engine_config: EngineConfig,
                 chat_template: str, multimodal: MultimodalModel | None = None,
                 max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES, guard: RequestGuard | None = None,
                 system_prompt: str | None = None, embedding_style: EmbeddingStyle | None = None) -> None:
        if multimodal is not None and multimodal.gpt is not model:
            raise GptkitError("multimodal= must be the multimodal model around `model` (its .gpt)")
        if max_media_bytes < 1:
            raise GptkitError(f"--max-media-bytes must be positive, got {max_media_bytes}")
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.guard = guard
        """What the server moderates (`gptkit.safety.policy.RequestGuard`), or None: nothing."""
        self.system_prompt = system_prompt
        """Opens every chat that has no system message of its own."""
        self.embedding_style = embedding_style or EmbeddingStyle()
        """How /v1/embeddings pools and writes text (an embedding fine-tune's own, `LLM.embedding_style`)."""
        self.llm = LLM(model, tokenizer, multimodal=multimodal, embedding_style=self.embedding_style)
        """What a chat with media goes through (`LLM.chat_prompt`), as in Python."""
        self.max_media_bytes = max_media_bytes
        self.engine = Engine(model, tokenizer, engine_config)
        self.config = self.engine.config
        self.block = model.config.block_size
        self.vocab = model.config.vocab_size
        self.metrics = Metrics()
        self.created = int(time.time())
        self.template = resolve_chat_template(tokenizer, chat_template)  # type: ignore[arg-type]
        self.chat_error: str | None = None
        if self.template == "tokens" and not has_chat_tokens(tokenizer):
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
        # With the engine's threads set (`EngineConfig.threads`), scoring stays on one thread: a second OpenMP
        # team would slow every decode step.
        single = self.engine.config.threads is not None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptkit-score",
                                           initializer=(lambda: torch.set_num_threads(1)) if single else None)
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
                stop_token_ids=ids, ignore_eos=body.ignore_eos,
                guard=self.guard.output_guard if self.guard is not None else None)
        except GptkitError as e:
            raise APIError(400, str(e), param=param_of(str(e))) from None

    def completion_prompts(self, prompt: Any, conditions: Any = None) -> list[_Prompt]:
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
            if conditions is not None:
                if not isinstance(item, str):
                    raise APIError(400, "conditions apply to text prompts, not to token ids", param="conditions")
                item = _with_conditions(conditions, item)
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

    def chat_messages(self, messages: Sequence[ChatMessageIn], *, media: bool = False) -> list[Message]:
        """The request's messages as a conversation; media: content parts other than text are kept (as dicts, for
        `gptkit.chat_format.content_parts`), else they are a 400."""
        if not messages:
            raise APIError(400, "messages must hold at least one message", param="messages")
        out: list[Message] = []
        for i, message in enumerate(messages, start=1):
            role = "system" if message.role == "developer" else message.role
            if role not in ROLES:
                raise APIError(400, f"message {i} has role {message.role!r}; this server takes system (or developer), "
                                    "user and assistant messages", param="messages")
            content: Any = message.content
            if isinstance(content, list):
                if all(part.type == "text" for part in content):
                    content = "".join(part.text or "" for part in content)
                elif media:
                    content = [part.model_dump(exclude_none=True) for part in content]
                else:
                    raise APIError(400, f"message {i}: only text content parts are supported here (media parts go to "
                                        "/v1/chat/completions)", param="messages")
            if content is None:
                raise APIError(400, f"message {i} ({role}) has no content", param="messages")
            out.append({"role": role, "content": content})
        return out

    def conversation(self, messages: Sequence[ChatMessageIn], conditions: Any = None, *,
                     media: bool = False) -> list[Message]:
        """`chat_messages`, opened by the server's system prompt when it has no system message, with the conditions
        at the top of the system message (one is added when there is none)."""
        if self.chat_error is not None:
            raise APIError(400, self.chat_error, param="messages", code="chat_template_unavailable")
        conversation = self.chat_messages(messages, media=media)
        if self.system_prompt and conversation[0]["role"] != "system":
            conversation.insert(0, {"role": "system", "content": self.system_prompt})
        prefix = _with_conditions(conditions, "").strip() if conditions is not None else ""
        if prefix:
            first = conversation[0]
            if first["role"] != "system":
                conversation.insert(0, {"role": "system", "content": prefix})
            elif isinstance(first["content"], str):
                conversation[0] = {"role": "system", "content": prefix + "\n\n" + first["content"]}
            else:
                conversation[0] = {"role": "system", "content": [{"type": "text", "text": prefix + "\n\n"},
                                                                 *first["content"]]}
        return conversation

    def render_chat(self, messages: Sequence[ChatMessageIn], add_generation_prompt: bool = True,
                    conditions: Any = None) -> list[int]:
        """The ids of a text conversation (media parts are a 400: see `chat_prompt`)."""
        conversation = self.conversation(messages, conditions)
        try:
            return render_chat(conversation, self.tokenizer, add_generation_prompt=add_generation_prompt,
                               template=self.template).ids  # type: ignore[arg-type]
        except GptkitError as e:
            raise APIError(400, str(e), param="messages") from None

    async def chat_prompt(self, messages: Sequence[ChatMessageIn],
                          conditions: Any = None) -> tuple[list[int], torch.Tensor | None]:
        """The ids of a conversation ready for the assistant's turn and, when it holds media parts, their input
        embeddings (`LLM.chat_prompt`, on the scoring thread). A text conversation renders as `render_chat` does.

        Media errors: a payload over `max_media_bytes` is a 413; a remote URL, a malformed data URL, bad base64,
        undecodable media, media outside user messages, media of a text-only or cross-fusion checkpoint, the
        wrong modality, or more media tokens than the context are 400s whose messages name the part or the numbers.
        """
        if not any(isinstance(m.content, list) and any(p.type != "text" for p in m.content) for m in messages):
            return self.render_chat(messages, conditions=conditions), None
        conversation = self.conversation(messages, conditions, media=True)
        loop = asyncio.get_running_loop()
        work = partial(self.llm.chat_prompt, conversation, chat_template=self.template,
                       max_media_bytes=self.max_media_bytes)
        try:
            return await loop.run_in_executor(self.executor, work)
        except MediaTooLarge as e:
            raise APIError(413, f"{e} (the server's --max-media-bytes)", param="messages",
                           code="media_too_large") from None
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

    def submit(self, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
               embeds: Sequence[torch.Tensor | None] | None = None) -> list[RequestHandle]:
        """One engine request per prompt (embeds: per prompt, its input embeddings or None); if one is refused
        (queue full), the others are cancelled."""
        if not self.engine.alive:
            raise EngineStopped("the engine is not running")
        loop = asyncio.get_running_loop()
        handles: list[RequestHandle] = []
        try:
            for k, (ids, p) in enumerate(zip(prompts, params)):
                handles.append(self.engine.submit(ids, p, loop=loop,
                                                  prompt_embeds=embeds[k] if embeds is not None else None))
        except BaseException:
            for handle in handles:
                handle.cancel()
            raise
        return handles


# --- running requests ----------------------------------------------------------------------------------

def _request_error(e: Exception) -> Exception:
    """The error to answer for a request that failed in the engine: a timeout or stop as it is, and an
    engine failure (the engine wraps it in a GptkitError) as a 500, not as the user's fault."""
    if isinstance(e, (RequestTimeout, EngineStopped)) or not isinstance(e, GptkitError):
        return e
    logger.error("a request failed in the engine: %s", e)
    return APIError(500, "the engine failed while generating (see the server log)", type="server_error")


async def merge_events(handles: Sequence[RequestHandle]) -> AsyncIterator[tuple[int, GenerationEvent]]:
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
async def cancel_on_disconnect(request: Request, handles: Sequence[RequestHandle]):
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


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _with_conditions(conditions: Any, text: str) -> str:
    """`text` after the conditions' control prefix, or a 400 naming what is wrong with them."""
    try:
        return render_conditions(conditions, text)
    except GptkitError as e:
        raise APIError(400, f"conditions: {e}", param="conditions") from None
