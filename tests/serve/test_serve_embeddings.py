"""POST /v1/embeddings through the official `openai` client against a real uvicorn server on loopback, checked against
`LLM.embed` and `gptkit.inference.embedding.embed_rows` computed in process: texts and token ids, float and base64,
dimensions, usage, and the bad inputs (empty, too long, ids outside the vocabulary, too many dimensions)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from gptkit.api import LLM  # noqa: E402
from gptkit.errors import GptkitError  # noqa: E402
from gptkit.inference.embedding import EmbeddingStyle, embed_rows  # noqa: E402
from gptkit.serve.app import create_app  # noqa: E402
from gptkit.serve.engine import EngineConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402
from test_serve import make_model, running  # noqa: E402

BLOCK = 64
TEXTS = ["To be, or not to be", "that is the question", "Whether 'tis nobler in the mind"]


@pytest.fixture(scope="module")
def tokenizer(shakespeare_text) -> Tokenizer:
    return Tokenizer.train_char([shakespeare_text[:50_000]])


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer.vocab_size, block_size=BLOCK)


@pytest.fixture(scope="module")
def client(model, tokenizer):
    app = create_app(model, tokenizer, model_name="tiny", engine_config=EngineConfig(max_batch=4))
    with running(app) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)


def test_pooling_skips_padding_and_batches_change_nothing(model, tokenizer):
    rows = [tokenizer.encode(t) for t in TEXTS]
    together = embed_rows(model, rows, batch_size=2)
    alone = torch.cat([embed_rows(model, [r]) for r in rows])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert torch.allclose(together.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        manual = model.hidden_states(torch.tensor([rows[1]]))[0].mean(0)
    torch.testing.assert_close(embed_rows(model, [rows[1]], normalize=False)[0], manual, atol=1e-5, rtol=1e-5)
    last = embed_rows(model, [rows[1]], pooling="last", normalize=False)[0]
    torch.testing.assert_close(last, model.hidden_states(torch.tensor([rows[1]]))[0, -1].detach(), atol=1e-5, rtol=1e-5)


def test_llm_embed_truncates_long_text_and_refuses_bad_input(model, tokenizer):
    llm = LLM(model, tokenizer)
    long = "word " * 200
    rows = llm.embedding_rows([long, "short"])
    assert [len(r) for r, _ in rows] == [BLOCK, len(tokenizer.encode("short"))] and [c for _, c in rows] == [True, False]
    torch.testing.assert_close(llm.embed(long), llm.embed(long[:BLOCK]))  # char tokenizer: one token a character
    assert llm.embed(TEXTS, dimensions=8).shape == (3, 8)
    for bad, needle in (([], "non-empty"), ([""], "empty text"), ([3], "list of strings")):
        with pytest.raises(GptkitError, match=needle):
            llm.embed(bad)
    with pytest.raises(GptkitError, match="dimensions"):
        llm.embed("x", dimensions=10_000)
    with pytest.raises(GptkitError, match="pooling"):
        llm.embed("x", pooling="max")


def test_openai_client_gets_the_same_vectors_as_in_process(client, model, tokenizer):
    expected = LLM(model, tokenizer).embed(TEXTS).numpy()
    got = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    assert [d.index for d in got.data] == [0, 1, 2] and got.model == "tiny"
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), expected, atol=1e-5)
    tokens = sum(len(tokenizer.encode(t)) for t in TEXTS)
    assert got.usage.prompt_tokens == got.usage.total_tokens == tokens
    # The client's default is base64: little-endian float32, the same numbers.
    raw = client.embeddings.with_raw_response.create(model="tiny", input=TEXTS[0], encoding_format="base64")
    b64 = raw.http_response.json()["data"][0]["embedding"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(b64), dtype="<f4"), expected[0], atol=1e-6)
    assert np.allclose(client.embeddings.create(model="tiny", input=TEXTS[0]).data[0].embedding, expected[0], atol=1e-5)


def test_token_ids_and_dimensions(client, model, tokenizer):
    ids = [tokenizer.encode(t) for t in TEXTS[:2]]
    by_ids = client.embeddings.create(model="tiny", input=ids, encoding_format="float")
    by_text = client.embeddings.create(model="tiny", input=TEXTS[:2], encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in by_ids.data], [d.embedding for d in by_text.data], atol=1e-6)
    one = client.embeddings.create(model="tiny", input=ids[0], encoding_format="float")  # one input as ids
    assert len(one.data) == 1
    small = client.embeddings.create(model="tiny", input=TEXTS[0], dimensions=8, encoding_format="float")
    vector = np.array(small.data[0].embedding)
    assert vector.shape == (8,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    full = np.array(by_text.data[0].embedding)
    np.testing.assert_allclose(vector, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(input=""), "empty"),
    (dict(input=[]), "non-empty"),
    (dict(input="x" * (BLOCK + 1)), "longer than this model's context"),
    (dict(input=[[1, 2, 10**6]]), "vocabulary"),
    (dict(input="hello", dimensions=10_000), "at most this model's width"),
    (dict(input="hello", dimensions=0), "dimensions"),
])
def test_bad_requests_get_a_400_naming_the_problem(client, kwargs, needle):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="tiny", encoding_format="float", **kwargs)
    assert needle in str(caught.value)


def test_truncate_prompt_tokens_keeps_the_first_tokens(client, model, tokenizer):
    long = "to be or not " * 20  # longer than the context of 64 characters
    got = client.embeddings.create(model="tiny", input=[long], encoding_format="float",
                                   extra_body={"truncate_prompt_tokens": 10})
    expected = LLM(model, tokenizer).embed(long[:10]).numpy()[0]  # char tokenizer: a token per character
    np.testing.assert_allclose(got.data[0].embedding, expected, atol=1e-5)
    assert got.usage.prompt_tokens == 10
    with pytest.raises(openai.BadRequestError, match="at most this model's context"):
        client.embeddings.create(model="tiny", input="x", extra_body={"truncate_prompt_tokens": BLOCK + 1})


def test_an_embedding_fine_tunes_style_and_pooling_are_served(model, tokenizer):
    style = EmbeddingStyle(pooling="last", text_style="english_mix")
    app = create_app(model, tokenizer, model_name="tiny", engine_config=EngineConfig(max_batch=4),
                     embedding_style=style)
    with running(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        got = client.embeddings.create(model="tiny", input=["Hello, World!", "hello , world !"],
                                       encoding_format="float")
    a, b = (np.array(d.embedding) for d in got.data)
    np.testing.assert_allclose(a, b, atol=1e-6)  # written in the model's style before tokenising
    expected = LLM(model, tokenizer, embedding_style=style).embed("hello , world !").numpy()[0]
    np.testing.assert_allclose(a, expected, atol=1e-5)
    mean = LLM(model, tokenizer).embed("hello , world !").numpy()[0]
    assert not np.allclose(a, mean, atol=1e-3)  # last-token pooling, not the default mean
