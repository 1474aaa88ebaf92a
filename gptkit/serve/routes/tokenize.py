"""routes/tokenize.py: POST /tokenize, POST /detokenize and GET /tokenizer_info (vLLM's shapes); knows nothing of
the engine or sampling."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gptkit.chat_format import jinja_chat_template
from gptkit.serve.routes import ERROR_RESPONSES
from gptkit.serve.schemas import (DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse,
                                  TokenizerInfo)
from gptkit.serve.state import APIError, ServerState


def register(app: FastAPI, state: ServerState) -> None:
    tokenizer = state.tokenizer

    @app.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "pass exactly one of prompt (text) or messages (a conversation)", param="prompt")
        if body.messages is not None:
            ids = state.render_chat(body.messages, body.add_generation_prompt)
        else:
            ids = tokenizer.hf.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids
        strs = [state.token_str(i) for i in ids] if body.return_token_strs else None
        return JSONResponse(TokenizeResponse(tokens=ids, count=len(ids), max_model_len=state.block,
                                             token_strs=strs).model_dump())

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        state.check_model(body.model)
        state.check_ids(body.tokens, "tokens")
        return JSONResponse({"prompt": tokenizer.decode(body.tokens)})

    @app.get("/tokenizer_info", response_model=TokenizerInfo, responses=ERROR_RESPONSES)
    async def tokenizer_info() -> JSONResponse:
        special = tokenizer.special
        info = TokenizerInfo(
            tokenizer_class="gptkit.tokenizer.Tokenizer", kind=state.tokenizer_kind,
            vocab_size=tokenizer.vocab_size, model_vocab_size=state.vocab,
            bos_token=special.bos, bos_token_id=tokenizer.bos_id, eos_token=special.eos,
            eos_token_id=tokenizer.eos_id, pad_token=special.pad, pad_token_id=tokenizer.pad_id,
            chat_template=None if state.chat_error else jinja_chat_template(tokenizer, state.template),
            chat_template_name=None if state.chat_error else state.template,
            model_max_length=state.block, max_model_len=state.block)
        return JSONResponse(info.model_dump())
