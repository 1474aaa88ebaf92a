"""routes/chat.py: POST /v1/chat/completions (a conversation rendered with the server's chat template, with its
images or audio for a multimodal checkpoint); knows nothing of sampling internals or of how a stream is written.

Media content parts (image_url data URLs, input_audio) become the input embeddings of the prompt
(`ServerState.chat_prompt`); the request then runs in the one batch like any other, and usage.prompt_tokens
counts the media tokens (the prompt's length as the model reads it)."""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import Response

from gptkit.chat_format import chat_stop_token_ids
from gptkit.inference.generate import GenerationEvent
from gptkit.inference.sampling import MAX_LOGPROBS
from gptkit.serve.routes import ERROR_RESPONSES, STREAM_RESPONSES
from gptkit.serve.routes.moderations import message_texts, refuse_chat, screen_input
from gptkit.serve.schemas import (ChatChoice, ChatChoiceLogprobs, ChatCompletionChunk, ChatCompletionRequest,
                                  ChatCompletionResponse, ChatMessageOut, ChatStreamChoice, DeltaMessage, Usage)
from gptkit.serve.state import APIError, ServerState, cancel_on_disconnect, merge_events, usage
from gptkit.serve.streaming import sse, stream_response


def register(app: FastAPI, state: ServerState) -> None:
    model_name, tokenizer = state.model_name, state.tokenizer

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses={**ERROR_RESPONSES, **STREAM_RESPONSES})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        started = time.perf_counter()
        state.check_model(body.model)
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
        state.check_n(body.n)
        top = body.top_logprobs
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            raise APIError(400, f"top_logprobs must be between 0 and {MAX_LOGPROBS}, got {top}",
                           param="top_logprobs")
        if top and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        ids, embeds = await state.chat_prompt(body.messages, conditions=body.conditions)
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        if requested is not None and requested < 1:
            raise APIError(400, f"{param} must be at least 1, got {requested}", param=param)
        max_tokens = state.fit_context(len(ids), requested if requested is not None else state.block,
                                       explicit=requested is not None, param="messages")
        stop_ids = chat_stop_token_ids(tokenizer, state.template)  # type: ignore[arg-type]
        params = state.sampling_params(body, max_tokens=max_tokens, logprobs=(top or 0) if body.logprobs else None,
                                       stop_token_ids=stop_ids, extra_stop=() if stop_ids else ("\n",))
        if await screen_input(state, message_texts(body.messages), "messages") is not None:  # flagged: refuse
            return refuse_chat(state, choices=body.n, prompt_tokens=len(ids), stream=body.stream,
                               include_usage=bool(body.stream_options and body.stream_options.include_usage))
        (handle,) = state.submit([ids], [params], [embeds])
        request_id, created, n = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.n

        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            sent = [0] * n

            def chunk(index: int, delta: DeltaMessage, logprobs: ChatChoiceLogprobs | None = None,
                      finish_reason: str | None = None) -> str:
                choice = ChatStreamChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
                return sse(ChatCompletionChunk(id=request_id, created=created, model=model_name,
                                               choices=[choice]).model_dump_json())

            def event_chunk(_: int, event: GenerationEvent) -> str | None:
                j = event.index
                logprobs = None
                if body.logprobs:
                    row_logprobs = handle.rows[j].logprobs or []
                    done = len(row_logprobs)
                    logprobs = state.chat_logprobs(row_logprobs[sent[j]:done])
                    sent[j] = done
                completion = event.completion
                if event.text or completion is not None or (logprobs and logprobs.content):
                    return chunk(j, DeltaMessage(content=event.text or None), logprobs,
                                 completion.finish_reason if completion is not None else None)
                return None

            def usage_chunk(totals: Usage) -> str:
                return sse(ChatCompletionChunk(id=request_id, created=created, model=model_name, choices=[],
                                               usage=totals).model_dump_json())

            opening = (chunk(j, DeltaMessage(role="assistant", content="")) for j in range(n))  # lazy: in the stream
            return stream_response([handle], opening=opening, chunk=event_chunk,
                                   usage_chunk=usage_chunk if include_usage else None, metrics=state.metrics,
                                   prompt_tokens=len(ids), started=started)

        try:
            async with cancel_on_disconnect(request, [handle]):
                async for _ in merge_events([handle]):
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
                logprobs=state.chat_logprobs(completion.logprobs or []) if body.logprobs else None))
        response = ChatCompletionResponse(id=request_id, created=created, model=model_name, choices=choices,
                                          usage=usage(len(ids), completion_tokens))
        state.metrics.observe_request([handle], prompt_tokens=len(ids), completion_tokens=completion_tokens,
                                      e2e=time.perf_counter() - started)
        return Response(response.model_dump_json(), media_type="application/json")
