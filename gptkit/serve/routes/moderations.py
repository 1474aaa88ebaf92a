"""routes/moderations.py: POST /v1/moderations (OpenAI's shape) and the input moderation of the generating endpoints
(`screen_input`, and the refusal replies of a server started with --refusal-message); knows nothing of sampling or of
how a moderator decides (`gptkit.safety`).

    POST /v1/moderations {"input": "text" | ["text", ...], "model"?: ignored}
    -> {"id": "modr-...", "model": "gptkit-moderation", "results": [{"flagged", "categories", "category_scores",
        "matches"}]}

The moderator is the server's (`--moderation-model` for the learned part), or the word-list rules alone when the
server moderates nothing. It runs on the scoring thread, so the event loop stays free while a classifier scores.
A flagged prompt is a 400 with code "content_filter", or with --refusal-message that message as the reply (each
choice, finish_reason "content_filter"; streamed as one chunk). Output moderation happens in the engine, where stop
strings are matched (`gptkit.inference.text.IncrementalText` with `SamplingParams.guard`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gptkit.safety.moderation import ModerationResult, Moderator
from gptkit.safety.policy import flagged_summary
from gptkit.serve.routes import ERROR_RESPONSES
from gptkit.serve.schemas import (ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChatMessageIn,
                                  ChatMessageOut, ChatStreamChoice, CompletionChoice, CompletionResponse, DeltaMessage,
                                  ModerationRequest, ModerationResponse)
from gptkit.serve.state import APIError, ServerState, usage
from gptkit.serve.streaming import sse

MODERATION_MODEL = "gptkit-moderation"


def register(app: FastAPI, state: ServerState) -> None:
    rules_only: list[Moderator] = []  # built on first use: the server may never be asked

    def moderator() -> Moderator:
        if state.guard is not None:
            return state.guard.moderator
        if not rules_only:
            rules_only.append(Moderator())
        return rules_only[0]

    @app.post("/v1/moderations", response_model=ModerationResponse, responses=ERROR_RESPONSES)
    async def moderations(body: ModerationRequest) -> JSONResponse:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise APIError(400, "input must be a string or a non-empty list of strings", param="input")
        chosen = moderator()
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(state.executor, chosen.moderate, texts)
        name = MODERATION_MODEL + ("" if chosen.learned is None else "-learned")
        response = {"id": f"modr-{uuid.uuid4().hex}", "model": name,
                    "results": [{"flagged": r.flagged, "categories": r.categories,
                                 "category_scores": r.category_scores,
                                 "matches": [asdict(m) for m in r.matches]} for r in results]}
        return JSONResponse(ModerationResponse.model_validate(response).model_dump())


def message_texts(messages: Sequence[ChatMessageIn]) -> list[str]:
    """The text of every message of a chat request (the parts of type text, for content parts)."""
    texts = []
    for message in messages:
        if isinstance(message.content, str):
            texts.append(message.content)
        elif message.content:
            texts.append("".join(part.text or "" for part in message.content if part.type == "text"))
    return [t for t in texts if t]


async def screen_input(state: ServerState, texts: Sequence[str], param: str) -> ModerationResult | None:
    """Input moderation. None: the texts pass (or input is not moderated); a result: flagged, and the server answers
    with its refusal message; flagged without one: raises the 400 (code content_filter)."""
    guard = state.guard
    if guard is None or not guard.checks_input:
        return None
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(state.executor, guard.check_input, list(texts))
    if result is None:
        return None
    if guard.refusal_message is None:
        raise APIError(400, f"the {'messages were' if param == 'messages' else 'prompt was'} flagged by the server's "
                            f"moderation: {flagged_summary(result)}", param=param, code="content_filter")
    return result


def _stream(chunks: list[str]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield chunk

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def refuse_completion(state: ServerState, *, choices: int, prompt_tokens: int, stream: bool,
                      include_usage: bool) -> Response:
    """/v1/completions answered with the refusal message: every choice says it, finish_reason content_filter."""
    text = state.guard.refusal_message if state.guard is not None else None
    assert text is not None
    request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    made = [CompletionChoice(index=i, text=text, finish_reason="content_filter") for i in range(choices)]
    totals = usage(prompt_tokens, 0)
    if not stream:
        return Response(CompletionResponse(id=request_id, created=created, model=state.model_name, choices=made,
                                           usage=totals).model_dump_json(), media_type="application/json")
    chunks = [sse(CompletionResponse(id=request_id, created=created, model=state.model_name,
                                     choices=[choice]).model_dump_json()) for choice in made]
    if include_usage:
        chunks.append(sse(CompletionResponse(id=request_id, created=created, model=state.model_name, choices=[],
                                             usage=totals).model_dump_json()))
    return _stream([*chunks, sse("[DONE]")])


def refuse_chat(state: ServerState, *, choices: int, prompt_tokens: int, stream: bool, include_usage: bool) -> Response:
    """/v1/chat/completions answered with the refusal message: every choice says it, finish_reason content_filter."""
    text = state.guard.refusal_message if state.guard is not None else None
    assert text is not None
    request_id, created, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), state.model_name
    totals = usage(prompt_tokens, 0)
    if not stream:
        made = [ChatChoice(index=j, message=ChatMessageOut(content=text), finish_reason="content_filter")
                for j in range(choices)]
        return Response(ChatCompletionResponse(id=request_id, created=created, model=name, choices=made,
                                               usage=totals).model_dump_json(), media_type="application/json")

    def chunk(choice: ChatStreamChoice, **extra) -> str:
        return sse(ChatCompletionChunk(id=request_id, created=created, model=name, choices=[choice],
                                       **extra).model_dump_json())

    chunks = []
    for j in range(choices):
        chunks.append(chunk(ChatStreamChoice(index=j, delta=DeltaMessage(role="assistant", content=""))))
        chunks.append(chunk(ChatStreamChoice(index=j, delta=DeltaMessage(content=text),
                                             finish_reason="content_filter")))
    if include_usage:
        chunks.append(sse(ChatCompletionChunk(id=request_id, created=created, model=name, choices=[],
                                              usage=totals).model_dump_json()))
    return _stream([*chunks, sse("[DONE]")])
