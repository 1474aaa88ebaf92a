"""Moderation in `gptkit serve`: POST /v1/moderations, flagged prompts (a 400 with code content_filter, or the refusal
message), flagged output stopping at the flagged span (finish_reason content_filter, streamed and not) without
disturbing a clean request decoded in the same batch, and the server's system prompt. A real uvicorn server on
loopback, driven by the official `openai` client; the model is the tiny random GPT of test_serve.

The random model writes gibberish, so the word list of these servers holds, besides two real words, a "word" that the
gibberish of one seeded request happens to contain: that request's output is then flagged at a known place, and its
text is known from `gptkit.inference.generate.generate` run alone.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from gptkit.chat_format import render_chat  # noqa: E402
from gptkit.inference.generate import generate  # noqa: E402
from gptkit.inference.sampling import SamplingParams  # noqa: E402
from gptkit.safety.moderation import Moderator, Rules  # noqa: E402
from gptkit.safety.policy import RequestGuard  # noqa: E402
from gptkit.serve.app import create_app  # noqa: E402
from gptkit.serve.engine import EngineConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402
from test_serve import make_model, running  # noqa: E402

MAX_TOKENS = 60
SYSTEM_PROMPT = "Be kind and honest."
REFUSAL = "I can't help with that."


@pytest.fixture(scope="module")
def tokenizer(shakespeare_text) -> Tokenizer:
    return Tokenizer.train_char([shakespeare_text[:50_000]])


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer.vocab_size)


def sampled(model, tokenizer, prompt: str, seed: int) -> str:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=seed, ignore_eos=True)
    return generate(model, tokenizer, prompt, params)[0].text


@pytest.fixture(scope="module")
def case(model, tokenizer):
    """(moderator, flagged request, its expected text, clean request, its text): a word the first request's output
    holds well inside it goes on the list; the clean request's output holds no listed word."""
    for seed in range(100):
        text = sampled(model, tokenizer, "Hello there", seed)
        words = [m.group() for m in re.finditer(r"(?<![A-Za-z0-9])[A-Za-z]{3,8}(?![A-Za-z0-9])", text)
                 if 8 < m.start() and m.end() < len(text) - 3]
        if words:
            break
    else:
        pytest.fail("no seed gives a word to flag")
    moderator = Moderator(rules=Rules(words=[words[0], "shit", "fuck"]))
    cut = moderator.rules.find(text)[0].start
    flagged = {"prompt": "Hello there", "seed": seed, "text": text[:cut]}
    for clean_seed in range(100):
        clean_text = sampled(model, tokenizer, "Good morrow", clean_seed)
        if not moderator.rules.find(clean_text):
            break
    clean = {"prompt": "Good morrow", "seed": clean_seed, "text": clean_text}
    return moderator, flagged, clean


@pytest.fixture(scope="module")
def base(model, tokenizer, case):
    guard = RequestGuard(case[0], "both")
    app = create_app(model, tokenizer, model_name="tiny", engine_config=EngineConfig(max_batch=8),
                     guard=guard, system_prompt=SYSTEM_PROMPT)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def request(which: dict, **extra) -> dict:
    return dict(model="tiny", prompt=which["prompt"], max_tokens=MAX_TOKENS, temperature=1.0, seed=which["seed"],
                extra_body={"ignore_eos": True}, **extra)


def test_the_moderations_endpoint_has_openai_s_shape(base, client):
    response = client.moderations.create(input=["oh shit", "a fine day"], model="omni-moderation-latest")
    assert response.id.startswith("modr-") and response.model == "gptkit-moderation"
    first, second = response.results
    assert first.flagged and not second.flagged
    raw = httpx.post(f"{base}/v1/moderations", json={"input": "oh shit"}).json()
    assert set(raw) == {"id", "model", "results"}
    (result,) = raw["results"]
    assert set(result) == {"flagged", "categories", "category_scores", "matches"}
    assert result["categories"] == {"vulgarity": True}  # only what this word list can judge
    assert result["category_scores"] == {"vulgarity": 1.0}
    assert result["matches"] == [{"word": "shit", "text": "shit", "start": 3, "end": 7, "category": "vulgarity"}]
    for bad in ({"input": []}, {"input": 3}, {}):
        error = httpx.post(f"{base}/v1/moderations", json=bad)
        assert error.status_code == 400 and error.json()["error"]["param"] == "input"


def test_a_flagged_prompt_is_a_400_content_filter(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "what the f.u.c.k"}],
                                       max_tokens=5)
    error = caught.value.body
    assert error["code"] == "content_filter" and error["param"] == "messages" and "'fuck'" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt=["fine", "sh1t"], max_tokens=5)
    assert caught.value.body["code"] == "content_filter" and caught.value.body["param"] == "prompt"
    assert client.completions.create(model="tiny", prompt="fine", max_tokens=3).choices[0].finish_reason == "length"


def test_flagged_output_stops_where_the_flagged_word_starts(client, case):
    _, flagged, clean = case
    choice = client.completions.create(**request(flagged)).choices[0]
    assert choice.finish_reason == "content_filter" and choice.text == flagged["text"]
    choice = client.completions.create(**request(clean)).choices[0]
    assert choice.finish_reason == "length" and choice.text == clean["text"]


def test_a_flagged_stream_ends_with_content_filter_and_no_text_after(client, case):
    _, flagged, _ = case
    chunks = list(client.completions.create(**request(flagged, stream=True)))
    texts = [c.choices[0].text for c in chunks]
    assert "".join(texts) == flagged["text"]
    assert len([t for t in texts if t]) >= 2  # streamed as it was cleared, not all at the end
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_a_flagged_request_does_not_disturb_a_clean_one_in_the_same_batch(base, case):
    _, flagged, clean = case

    async def both() -> tuple[list, object]:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        try:
            async def stream_flagged() -> list:
                return [c async for c in await client.completions.create(**request(flagged, stream=True))]

            return await asyncio.gather(stream_flagged(), client.completions.create(**request(clean)))
        finally:
            await client.close()

    for _ in range(2):
        chunks, clean_response = asyncio.run(both())
        assert "".join(c.choices[0].text for c in chunks) == flagged["text"]
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert clean_response.choices[0].text == clean["text"]
        assert clean_response.choices[0].finish_reason == "length"


def test_chat_output_is_moderated_too(base, model, tokenizer, case):
    moderator, _, _ = case
    # Whatever the reply, it must not contain a listed word, and finish_reason says why it ended.
    for seed in range(4):
        reply = httpx.post(f"{base}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 40, "temperature": 1.0, "seed": seed,
            "ignore_eos": True}).json()["choices"][0]
        assert not moderator.rules.find(reply["message"]["content"])
        assert reply["finish_reason"] in ("length", "content_filter", "stop")


def test_the_system_prompt_opens_a_chat_that_has_none(base, tokenizer):
    user = [{"role": "user", "content": "Hi"}]
    ids = httpx.post(f"{base}/tokenize", json={"messages": user}).json()["tokens"]
    expected = render_chat([{"role": "system", "content": SYSTEM_PROMPT}, *user], tokenizer,
                           add_generation_prompt=True, template="tokens").ids
    assert ids == expected
    own = [{"role": "system", "content": "Be brief."}, *user]
    ids = httpx.post(f"{base}/tokenize", json={"messages": own}).json()["tokens"]
    assert ids == render_chat(own, tokenizer, add_generation_prompt=True, template="tokens").ids


def test_a_refusal_message_answers_a_flagged_prompt(model, tokenizer):
    guard = RequestGuard(Moderator(), "input", refusal_message=REFUSAL)
    app = create_app(model, tokenizer, model_name="tiny", engine_config=EngineConfig(max_batch=4), guard=guard)
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "you piece of shit"}]
        response = client.chat.completions.create(model="tiny", messages=messages, n=2, max_tokens=5)
        assert [c.message.content for c in response.choices] == [REFUSAL, REFUSAL]
        assert {c.finish_reason for c in response.choices} == {"content_filter"}
        assert response.usage.completion_tokens == 0
        chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == REFUSAL
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        completion = client.completions.create(model="tiny", prompt="shit", max_tokens=5)
        assert completion.choices[0].text == REFUSAL and completion.choices[0].finish_reason == "content_filter"
        # Output is not moderated by this server, and clean prompts generate as usual.
        clean = client.completions.create(model="tiny", prompt="fine", max_tokens=4, temperature=0)
        assert clean.choices[0].finish_reason == "length"
        # The endpoint answers with this server's moderator.
        body = httpx.post(f"{url}/v1/moderations", json={"input": ["a nigger", "ok"]}).json()
        assert [r["flagged"] for r in body["results"]] == [True, False]
        assert set(body["results"][0]["categories"]) == {"sexual", "hate", "vulgarity"}
        assert json.dumps(body)  # plain JSON all the way down
