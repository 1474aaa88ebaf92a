"""routes/models.py: GET /v1/models and GET /v1/models/{model} (the one model served); knows nothing of generation."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gptkit.serve.routes import ERROR_RESPONSES
from gptkit.serve.schemas import ModelCard, ModelList
from gptkit.serve.state import ServerState


def register(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
    async def list_models() -> JSONResponse:
        return JSONResponse(ModelList(data=[_model_card(state)]).model_dump())

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
    async def retrieve_model(model_id: str) -> JSONResponse:
        state.check_model(model_id)
        return JSONResponse(_model_card(state).model_dump())


def _model_card(state: ServerState) -> ModelCard:
    return ModelCard(id=state.model_name, created=state.created, root=state.model_name, max_model_len=state.block)
