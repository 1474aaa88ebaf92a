"""The customer-service assistant in the browser: gptkit's chat page (`gptkit.serve.web`) in front of an OpenAI-shaped
`/v1/chat/completions` whose replies come from `Assistant` (retrieved passages, citations, "I don't know"); knows
nothing of retrieval itself.

    python examples/customer_service/assistant.py --checkpoint out/bench/embed_jargon --serve --port 8080
    # then open http://127.0.0.1:8080/ ; or talk to it with any OpenAI client at http://127.0.0.1:8080/v1

The last user message is the question; the earlier user/assistant pairs are the history (follow-up questions lean
on it). Streamed replies arrive as the model writes them, in OpenAI's chunk format; the ids a reply cites are in its
text ("[logic-bomb]") and, as a gptkit extra, in the response's `citations` field (in the last chunk of a stream).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from assistant import Assistant, AssistantError, Turn
from gptkit.serve.web import mount_chat_page

MODEL_NAME = "customer-service"


def conversation(body: Any) -> tuple[str, list[Turn]]:
    """(question, history) from an OpenAI chat request's messages, or AssistantError naming what is wrong."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise AssistantError("messages must be a non-empty list of {role, content} objects")
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise AssistantError(f"messages[{i}] must be {{role: system|user|assistant, content: text}}")
        if message["role"] != "system":  # the assistant keeps to its knowledge base: a system prompt is not used
            turns.append((message["role"], message["content"]))
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise AssistantError("the last message must be the user's question (non-empty)")
    history = [(q, a) for (r1, q), (r2, a) in zip(turns[:-1], turns[1:-1]) if r1 == "user" and r2 == "assistant"]
    return turns[-1][1], history


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": None}}, status_code=status)


def create_app(assistant: Assistant) -> FastAPI:
    app = FastAPI(title="gptkit customer service")

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "gptkit"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the request body is not valid JSON")
        try:
            question, history = conversation(body)
            streamed = assistant.reply_stream(question, history)
        except AssistantError as e:
            return error(400, str(e))
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not body.get("stream"):
            try:
                text = "".join(streamed.pieces)
            except AssistantError as e:
                return error(502, str(e))
            return {"id": completion_id, "object": "chat.completion", "created": created, "model": MODEL_NAME,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "citations": streamed.cited, "notes": streamed.notes}

        def events() -> Iterator[str]:
            def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
                data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": MODEL_NAME, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                        **extra}
                return f"data: {json.dumps(data)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            try:
                for piece in streamed.pieces:
                    yield chunk({"content": piece})
            except AssistantError as e:  # the model's server failed mid-reply: say so in the stream
                yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                return
            yield chunk({}, "stop", citations=streamed.cited, notes=streamed.notes)
            yield "data: [DONE]\n\n"

        # A sync generator: Starlette runs it in a worker thread, so generating does not block the event loop.
        return StreamingResponse(events(), media_type="text/event-stream")

    mount_chat_page(app, title="Customer service")
    return app


def serve(assistant: Assistant, host: str = "127.0.0.1", port: int = 8080) -> None:
    print(f"customer service: chat page at http://{host}:{port}/ (OpenAI API at http://{host}:{port}/v1)",
          flush=True)
    uvicorn.run(create_app(assistant), host=host, port=port, log_level="warning")
