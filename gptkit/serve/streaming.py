"""The one server-sent-events writer both streaming endpoints use (engine events in, `data: ...` chunks and
`data: [DONE]` out); knows nothing of an endpoint's chunk shapes, which the endpoint passes in."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from fastapi.responses import StreamingResponse

from gptkit.errors import GptkitError
from gptkit.inference.generate import GenerationEvent
from gptkit.serve.engine import EngineStopped, RequestHandle, RequestTimeout
from gptkit.serve.metrics import Metrics
from gptkit.serve.schemas import Usage
from gptkit.serve.state import APIError, error_body, merge_events, usage

logger = logging.getLogger("gptkit.serve")

ChunkOf = Callable[[int, GenerationEvent], str | None]
"""An endpoint's chunk for (request number, event): an `sse(...)` string, or None when it carries nothing."""


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def stream_response(handles: Sequence[RequestHandle], *, opening: Iterable[str], chunk: ChunkOf,
                    usage_chunk: Callable[[Usage], str] | None, metrics: Metrics, prompt_tokens: int,
                    started: float) -> StreamingResponse:
    """The streamed response of `handles`: the events of `sse_events`, with the headers that keep proxies
    from buffering them."""
    return StreamingResponse(sse_events(handles, opening=opening, chunk=chunk, usage_chunk=usage_chunk,
                                        metrics=metrics, prompt_tokens=prompt_tokens, started=started),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def sse_events(handles: Sequence[RequestHandle], *, opening: Iterable[str], chunk: ChunkOf,
                     usage_chunk: Callable[[Usage], str] | None, metrics: Metrics, prompt_tokens: int,
                     started: float) -> AsyncIterator[str]:
    """Server-sent events for the requests `handles`, as their engine events come.

    First the `opening` chunks (iterated here, once the response has started: a generator runs lazily),
    then `chunk(i, event)` for each event of request i (skipped when None), then, when `usage_chunk` is
    given, the usage chunk, then `data: [DONE]`; the request is then recorded in `metrics`. An error
    after the response has started arrives as an event holding {"error": {...}}, followed by [DONE].
    However the stream ends (finished, failed, or the client gone), the requests are cancelled.
    """
    try:
        for data in opening:
            yield data
        completion_tokens = 0
        async for i, event in merge_events(handles):
            data = chunk(i, event)
            if event.completion is not None:
                completion_tokens += len(event.completion.token_ids)
            if data is not None:
                yield data
        if usage_chunk is not None:
            yield usage_chunk(usage(prompt_tokens, completion_tokens))
        yield sse("[DONE]")
        metrics.observe_request(handles, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                e2e=time.perf_counter() - started)
    except Exception as e:  # noqa: BLE001 - the response has started: report in the stream
        yield _stream_error(e)
        yield sse("[DONE]")
    finally:
        for handle in handles:
            handle.cancel()


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
    return sse(json.dumps(body))
