"""routes/embeddings.py: POST /v1/embeddings (OpenAI's shape); knows nothing of the engine or sampling, and of how
an embedding is pooled (`gptkit.inference.embedding`).

    POST /v1/embeddings {"input": "text" | ["text", ...] | [ids] | [[ids], ...], "encoding_format"?: "float" |
                         "base64", "dimensions"?: D}
    -> {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [...] | "base64"}],
        "model": ..., "usage": {"prompt_tokens", "total_tokens"}}

Embeddings are the final hidden states pooled over an input's tokens, L2-normalised, as `LLM.embed` gives them: an
embedding fine-tune's own pooling and text style (`--task embed`, applied to text inputs), else the mean over the raw
text. An input longer than the context is refused (400, naming the input), as OpenAI's API does, rather than
silently cut, unless the request asks for vLLM's `truncate_prompt_tokens: N` (keep the first N tokens).
Scoring runs on the scoring thread, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gptkit.inference.embedding import embed_rows
from gptkit.serve.routes import ERROR_RESPONSES
from gptkit.serve.schemas import EmbeddingRequest, EmbeddingResponse
from gptkit.serve.state import APIError, ServerState


def register(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def embeddings(body: EmbeddingRequest) -> JSONResponse:
        state.check_model(body.model)
        limit = body.truncate_prompt_tokens
        if limit is not None and limit > state.block:
            raise APIError(400, f"truncate_prompt_tokens must be at most this model's context of {state.block}, "
                                f"got {limit}", param="truncate_prompt_tokens")
        rows = input_rows(state, body.input, limit)
        width = state.model.config.n_embd
        if body.dimensions is not None and body.dimensions > width:
            raise APIError(400, f"dimensions must be at most this model's width {width}, got {body.dimensions}",
                           param="dimensions")
        loop = asyncio.get_running_loop()
        pooling = state.embedding_style.pooling
        vectors = await loop.run_in_executor(
            state.executor, lambda: embed_rows(state.model, rows, pooling=pooling, dimensions=body.dimensions))
        data = [{"object": "embedding", "index": i, "embedding": encode(v.numpy(), body.encoding_format)}
                for i, v in enumerate(vectors)]
        tokens = sum(len(r) for r in rows)
        return JSONResponse({"object": "list", "data": data, "model": state.model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def input_rows(state: ServerState, value: str | list, limit: int | None = None) -> list[list[int]]:
    """The request's inputs as token-id rows, each checked: not empty, ids in the vocabulary, within the context
    (or cut to `limit` tokens). Text is written in the model's embedding style before it is tokenised."""
    if isinstance(value, str):
        items: list = [value]
    elif value and all(isinstance(v, int) for v in value):
        items = [value]  # one input given as token ids
    else:
        items = list(value)
    if not items:
        raise APIError(400, "input must be a string, a non-empty list of strings, or token ids", param="input")
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise APIError(400, f"input[{i}] is empty: an embedding needs at least one character", param="input")
            row = state.tokenizer.encode(state.embedding_style.restyle(item))
        else:
            if not item:
                raise APIError(400, f"input[{i}] has no token ids", param="input")
            state.check_ids(item, f"input[{i}]")
            row = list(item)
        if limit is not None:
            row = row[:limit]
        if len(row) > state.block:
            raise APIError(400, f"input[{i}] is {len(row)} tokens, longer than this model's context of "
                                f"{state.block}; shorten it or split it", param="input")
        rows.append(row)
    return rows


def encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
