"""routes/system.py: GET /health and GET /metrics (Prometheus); knows nothing of requests or the model."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from gptkit.serve.metrics import CONTENT_TYPE
from gptkit.serve.schemas import Health
from gptkit.serve.state import ServerState


def register(app: FastAPI, state: ServerState) -> None:
    @app.get("/health", response_model=Health, summary="200 while the engine runs, 503 otherwise")
    async def health() -> JSONResponse:
        if state.engine.alive:
            return JSONResponse({"status": "ok", "details": None})
        return JSONResponse({"status": "unavailable", "details": {"engine": "stopped"}}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics (text format)",
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        return Response(state.metrics.render(state.engine), media_type=CONTENT_TYPE)
