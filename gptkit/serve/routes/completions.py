"""routes/completions.py: POST /v1/completions (OpenAI's legacy completions, with echo and prompt logprobs); knows
nothing of sampling internals or of how a stream is written."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import Response

from gptkit.inference.decode import Completion
from gptkit.inference.generate import GenerationEvent
from gptkit.inference.sampling import MAX_LOGPROBS, TokenLogprob
from gptkit.serve.routes import ERROR_RESPONSES, STREAM_RESPONSES
from gptkit.serve.routes.moderations import refuse_completion, screen_input
from gptkit.serve.schemas import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Usage
from gptkit.serve.state import APIError, ServerState, cancel_on_disconnect, merge_events, usage
from gptkit.serve.streaming import sse, stream_response

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def register(app: FastAPI, state: ServerState) -> None:
    model_name = state.model_name

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses={**ERROR_RESPONSES, **STREAM_RESPONSES})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        started = time.perf_counter()
        state.check_model(body.model)
        if body.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, "best_of is not supported by this server (use n)", param="best_of")
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
        state.check_n(body.n)
        if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
            raise APIError(400, f"logprobs must be between 0 and {MAX_LOGPROBS}, got {body.logprobs}",
                           param="logprobs")
        explicit = body.max_tokens is not None
        max_tokens = body.max_tokens if explicit else COMPLETION_DEFAULT_MAX_TOKENS
        if max_tokens < 0 or (max_tokens == 0 and not body.echo):
            raise APIError(400, f"max_tokens must be at least 1 (0 is allowed only with echo=true, to score the "
                                f"prompt), got {max_tokens}", param="max_tokens")
        prompts = state.completion_prompts(body.prompt, body.conditions)
        if len(prompts) > 1 and len(prompts) > state.config.max_queue:
            raise APIError(400, f"{len(prompts)} prompts in one request exceed the server's queue of "
                                f"{state.config.max_queue}: send at most that many at once", param="prompt")
        budgets = [state.fit_context(len(p.ids), max_tokens, explicit=explicit) for p in prompts]
        params = [state.sampling_params(body, max_tokens=m, logprobs=body.logprobs) for m in budgets if m > 0]
        if not params:  # max_tokens=0: validate the sampling fields all the same
            state.sampling_params(body, max_tokens=1, logprobs=body.logprobs)
        if await screen_input(state, [p.text for p in prompts], "prompt") is not None:  # flagged: refuse
            return refuse_completion(state, choices=len(prompts) * body.n,
                                     prompt_tokens=sum(len(p.ids) for p in prompts), stream=body.stream,
                                     include_usage=bool(body.stream_options and body.stream_options.include_usage))
        echo_logprobs: list[list[TokenLogprob | None]] | None = None
        if body.echo and body.logprobs is not None:
            echo_logprobs = await state.score([p.ids for p in prompts], body.logprobs)
        handles = state.submit([p.ids for p in prompts], params) if params else []
        request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        n = body.n
        prompt_tokens = sum(len(p.ids) for p in prompts)

        def echo_part(i: int) -> tuple[str, CompletionLogprobs | None]:
            text = prompts[i].text if body.echo else ""
            if echo_logprobs is None:
                return text, None
            return text, state.completion_logprobs(prompts[i].ids, echo_logprobs[i], 0)

        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            offsets = {}
            sent = {}

            def chunk(index: int, text: str, logprobs: CompletionLogprobs | None = None,
                      finish_reason: str | None = None) -> str:
                choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish_reason)
                return sse(CompletionResponse(id=request_id, created=created, model=model_name,
                                              choices=[choice]).model_dump_json())

            def opening() -> Iterator[str]:
                for i in range(len(prompts)):
                    text, logprobs = echo_part(i)
                    for j in range(n):
                        offsets[i * n + j] = len(text)
                        sent[i * n + j] = 0
                        if body.echo:
                            yield chunk(i * n + j, text, logprobs,
                                        "length" if not handles else None)

            def event_chunk(i: int, event: GenerationEvent) -> str | None:
                index = i * n + event.index
                logprobs = None
                if body.logprobs is not None:
                    row = handles[i].rows[event.index]
                    done = len(row.logprobs or [])
                    new = slice(sent[index], done)
                    logprobs = state.completion_logprobs(row.token_ids[new], (row.logprobs or [])[new],
                                                         offsets[index])
                    offsets[index] += sum(len(t) for t in logprobs.tokens)
                    sent[index] = done
                completion = event.completion
                if event.text or completion is not None or (logprobs and logprobs.tokens):
                    return chunk(index, event.text, logprobs,
                                 completion.finish_reason if completion is not None else None)
                return None

            def usage_chunk(totals: Usage) -> str:
                return sse(CompletionResponse(id=request_id, created=created, model=model_name, choices=[],
                                              usage=totals).model_dump_json())

            return stream_response(handles, opening=opening(), chunk=event_chunk,
                                   usage_chunk=usage_chunk if include_usage else None, metrics=state.metrics,
                                   prompt_tokens=prompt_tokens, started=started)

        try:
            async with cancel_on_disconnect(request, handles):
                async for _ in merge_events(handles):
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
                        parts.append(state.completion_logprobs(completion.token_ids, completion.logprobs or [],
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
                                      usage=usage(prompt_tokens, completion_tokens))
        state.metrics.observe_request(handles, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                      e2e=time.perf_counter() - started)
        return Response(response.model_dump_json(), media_type="application/json")
