"""`gptkit serve`: a real uvicorn server on loopback, driven by the official `openai` client and httpx.

One tiny random GPT (2 layers, 32 wide, 1,024-token context) and a character tokenizer trained on the
bundled corpus serve every test of the module; a few tests start a second, differently configured
server. Expected texts come from `gptkit.inference.generate.generate` run alone with the same parameters, so
the tests check that batching many requests together changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import uvicorn  # noqa: E402

from gptkit.api import LLM  # noqa: E402
from gptkit.config import ModelConfig  # noqa: E402
from gptkit.chat_format import chat_stop_token_ids, render_chat
from gptkit.inference.generate import generate
from gptkit.inference.sampling import SamplingParams
from gptkit.models.gpt import GPT  # noqa: E402
from gptkit.serve.app import create_app  # noqa: E402
from gptkit.serve.engine import EngineConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402

MAX_BATCH = 16
MAX_BODY = 200_000
BLOCK = 1024


@contextmanager
def running(app):
    """Serve `app` with uvicorn on a free loopback port in a background thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def make_model(vocab_size: int, block_size: int = BLOCK, seed: int = 0, n_layer: int = 2, n_embd: int = 32) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig.from_dict(dict(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2,
                                        n_embd=n_embd))
    return GPT(config).eval()


@pytest.fixture(scope="module")
def tokenizer(shakespeare_text) -> Tokenizer:
    return Tokenizer.train_char([shakespeare_text[:50_000]])


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    return make_model(tokenizer.vocab_size)


@pytest.fixture(scope="module")
def served(model, tokenizer):
    app = create_app(model, tokenizer, model_name="tiny", max_body_bytes=MAX_BODY,
                     engine_config=EngineConfig(max_batch=MAX_BATCH, max_queue=256))
    with running(app) as base:
        yield app, base


@pytest.fixture(scope="module")
def base(served) -> str:
    return served[1]


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def reference(model, tokenizer, prompt, **params) -> list[str]:
    """The texts gptkit's own sampler gives for this request, run alone."""
    return [c.text for c in generate(model, tokenizer, prompt, SamplingParams(**params))]


def test_health_models_and_openapi(base, client):
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize",
                 "/tokenizer_info", "/health", "/metrics"):
        assert path in paths, path
    assert "ignore_eos" in json.dumps(httpx.get(f"{base}/openapi.json").json()["components"])


def test_completions_n_stop_and_seeds(client, model, tokenizer):
    greedy = reference(model, tokenizer, "ROMEO:", max_tokens=20, temperature=0)[0]
    assert len(greedy) >= 10
    stop = greedy[6:8]
    expected = greedy[:greedy.find(stop)]
    response = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0, n=2,
                                         stop=[stop, "never appears"])
    assert response.object == "text_completion" and response.id.startswith("cmpl-")
    assert [c.index for c in response.choices] == [0, 1]
    assert [c.text for c in response.choices] == [expected, expected]
    assert {c.finish_reason for c in response.choices} == {"stop"}
    assert response.usage.prompt_tokens == len(tokenizer.encode("ROMEO:"))
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    # Sampling with a seed: sample j uses seed + j, as in gptkit.inference; reproducible.
    sampled = dict(max_tokens=12, temperature=1.0, top_p=0.95, n=2)
    first = client.completions.create(model="tiny", prompt="JULIET:", seed=7, **sampled)
    again = client.completions.create(model="tiny", prompt="JULIET:", seed=7, **sampled)
    other = client.completions.create(model="tiny", prompt="JULIET:", seed=8, **sampled)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices]
    assert texts == reference(model, tokenizer, "JULIET:", seed=7, **sampled)
    assert texts != [c.text for c in other.choices]
    assert {c.finish_reason for c in first.choices} == {"length"}


def test_prompt_lists_and_token_ids(client, model, tokenizer):
    prompts = ["ROMEO:", "JULIET:\nO", "To be, or"]
    params = dict(max_tokens=6, temperature=0.9, seed=3, n=2, presence_penalty=0.5, repetition_penalty=1.2)
    expected = reference(model, tokenizer, prompts, **params)
    extra = {"repetition_penalty": 1.2}
    params.pop("repetition_penalty")
    by_text = client.completions.create(model="tiny", prompt=prompts, extra_body=extra, **params)
    assert [c.index for c in by_text.choices] == list(range(6))  # prompt i, sample j -> i * n + j
    assert [c.text for c in by_text.choices] == expected
    by_ids = client.completions.create(model="tiny", prompt=[tokenizer.encode(p) for p in prompts],
                                       extra_body=extra, **params)
    assert [c.text for c in by_ids.choices] == expected
    assert by_ids.usage.prompt_tokens == sum(len(tokenizer.encode(p)) for p in prompts)
    single = client.completions.create(model="tiny", prompt=tokenizer.encode("ROMEO:"), max_tokens=5,
                                       temperature=0)
    assert [c.text for c in single.choices] == reference(model, tokenizer, "ROMEO:", max_tokens=5, temperature=0)


def test_chat_completion_with_logprobs(client, model, tokenizer):
    messages = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "Who is there?"}]
    ids = render_chat(messages, tokenizer, add_generation_prompt=True, template="tokens").ids
    expected = reference(model, tokenizer, ids, max_tokens=10, temperature=0,
                         stop_token_ids=chat_stop_token_ids(tokenizer, "tokens"))[0]
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                              logprobs=True, top_logprobs=2)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert response.usage.prompt_tokens == len(ids)
    content = choice.logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.bytes
        assert abs(entry.logprob - entry.top_logprobs[0].logprob) < 1e-5  # greedy: the chosen one is the top
    # max_completion_tokens wins over max_tokens; n samples are indexed 0..n-1.
    short = client.chat.completions.create(model="tiny", messages=messages, max_tokens=50, max_completion_tokens=3,
                                           n=2, temperature=0.7, seed=1)
    assert [c.index for c in short.choices] == [0, 1]
    assert short.usage.completion_tokens <= 6


def test_conditions_render_before_the_prompt_and_into_the_system_message(client, model, tokenizer):
    from gptkit.prompting.conditions import render_conditions

    conditions = {"tone": "formal", "rules": [{"if": "the customer is angry", "then": "apologise first"}]}
    prompt = "Customer: where is my parcel?\nAgent:"
    rendered = render_conditions(conditions, prompt)
    assert rendered != prompt
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, echo=True,
                                    extra_body={"conditions": conditions})
    expected = reference(model, tokenizer, rendered, max_tokens=8, temperature=0)[0]
    assert got.choices[0].text == rendered + expected
    assert got.usage.prompt_tokens == len(tokenizer.encode(rendered))
    # chat: the same lines open the system message (here: a new one)
    messages = [{"role": "user", "content": "where is my parcel?"}]
    with_system = [{"role": "system", "content": "Tone: formal\nIf the customer is angry, apologise first."},
                   *messages]
    by_conditions = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                                   extra_body={"conditions": conditions})
    by_hand = client.chat.completions.create(model="tiny", messages=with_system, max_tokens=8, temperature=0)
    assert by_conditions.choices[0].message.content == by_hand.choices[0].message.content
    assert by_conditions.usage.prompt_tokens == by_hand.usage.prompt_tokens
    for bad in ({"mood": "sad"}, {"rules": [{"if": "x"}]}):
        error = bad_request(client.completions.create, model="tiny", prompt="x", max_tokens=2,
                            extra_body={"conditions": bad})
        assert "conditions" in str(error)
    error = bad_request(client.completions.create, model="tiny", prompt=[1, 2], max_tokens=2,
                        extra_body={"conditions": conditions})
    assert "token ids" in str(error)


def test_streaming_matches_non_streaming(client):
    kwargs = dict(model="tiny", prompt="ROMEO:", max_tokens=16, temperature=0, logprobs=2)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert all(c.object == "text_completion" for c in chunks)
    texted = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in texted) == whole.choices[0].text
    assert texted[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    tokens = [t for c in texted if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == whole.choices[0].logprobs.tokens
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    # n=2 with a seed: each index's pieces join to the non-streamed choice of that index.
    sampled = dict(model="tiny", prompt=["A", "B"], max_tokens=8, temperature=1.0, n=2, seed=11)
    whole = client.completions.create(**sampled)
    joined = {}
    for c in client.completions.create(stream=True, **sampled):
        for choice in c.choices:
            joined[choice.index] = joined.get(choice.index, "") + choice.text
    assert joined == {c.index: c.text for c in whole.choices}

    messages = [{"role": "user", "content": "Good morrow"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    pieces = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert pieces[0].choices[0].delta.role == "assistant"
    assert all(p.object == "chat.completion.chunk" for p in pieces)
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == chat.choices[0].message.content
    assert [p.choices[0].finish_reason for p in pieces if p.choices][-1] == chat.choices[0].finish_reason
    assert pieces[-1].choices == [] and pieces[-1].usage.total_tokens == chat.usage.total_tokens


def test_gptkit_remote_backend_gets_the_local_text(base, model, tokenizer):
    from gptkit.serve.client import LocalBackend, RemoteBackend

    remote, local = RemoteBackend(base), LocalBackend(LLM(model, tokenizer))
    assert remote.model == "tiny"
    sampling = dict(max_tokens=10, temperature=0)
    assert "".join(remote.complete("ROMEO:", **sampling)) == "".join(local.complete("ROMEO:", **sampling))
    messages = [{"role": "user", "content": "Good morrow"}]
    assert "".join(remote.chat(messages, **sampling)) == "".join(local.chat(messages, **sampling))


def test_raw_sse_format(base):
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])


def test_completion_logprobs_format(client):
    response = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8, temperature=0.8, seed=2,
                                         logprobs=3)
    logprobs = response.choices[0].logprobs
    n = response.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == \
        len(logprobs.text_offset) == n
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        # The top 3 plus the chosen token, keyed by text (byte tokens that decode alike share a key).
        assert 1 <= len(top) <= 4 and token in top and value <= 0
        assert abs(top[token] - value) < 1e-6 or top[token] >= value
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0


def test_echo_logprobs_equal_gptkit_scoring(client, model, tokenizer):
    text = "ROMEO: But soft"
    ids = tokenizer.encode(text)
    with torch.inference_mode():
        direct = F.log_softmax(model(torch.tensor([ids])).float()[0], dim=-1)  # (L, V)
    expected = [direct[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    llm_sum = LLM(model, tokenizer).loglikelihood_ids(ids[:1], ids[1:])

    for prompt in (text, ids):
        response = client.completions.create(model="tiny", prompt=prompt, echo=True, logprobs=1, max_tokens=1,
                                             temperature=0)
        choice = response.choices[0]
        assert choice.text.startswith(text)
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(ids) + 1
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert lp.tokens[:len(ids)] == [tokenizer.decode([t]) for t in ids]
        assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:len(ids)], expected)) < 1e-4
        assert abs(sum(lp.token_logprobs[1:len(ids)]) - llm_sum) < 1e-4
        assert abs(lp.token_logprobs[-1] - direct[-1].max().item()) < 1e-4  # the greedy token after the prompt
        for token, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
            assert token in top and max(top.values()) >= value - 1e-6

    # lm-evaluation-harness style: a batch of token-id prompts, one choice per prompt, in order.
    batch = [tokenizer.encode("To be"), tokenizer.encode("or not to be, that")]
    response = client.completions.create(model="tiny", prompt=batch, echo=True, logprobs=1, max_tokens=1,
                                         temperature=0)
    assert [c.index for c in response.choices] == [0, 1]
    assert [len(c.logprobs.token_logprobs) for c in response.choices] == [len(b) + 1 for b in batch]

    # max_tokens=0 with echo: the prompt alone, scored.
    response = client.completions.create(model="tiny", prompt=text, echo=True, logprobs=0, max_tokens=0)
    choice = response.choices[0]
    assert choice.text == text and choice.finish_reason == "length"
    assert len(choice.logprobs.token_logprobs) == len(ids) and response.usage.completion_tokens == 0
    assert max(abs(a - b) for a, b in zip(choice.logprobs.token_logprobs[1:], expected)) < 1e-4
    # A prompt of the whole context can be scored (there is no room to generate).
    full = tokenizer.encode(("But soft, what light " * 60)[:BLOCK])
    assert len(full) == BLOCK
    response = client.completions.create(model="tiny", prompt=full, echo=True, logprobs=0, max_tokens=0)
    assert len(response.choices[0].logprobs.token_logprobs) == BLOCK
    streamed = list(client.completions.create(model="tiny", prompt=text, echo=True, logprobs=0, max_tokens=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text


def bad_request(call, **kwargs) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call(**kwargs)
    error = info.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    assert set(error.body) == {"message", "type", "param", "code"}
    return error


def test_invalid_requests_are_openai_400s(base, client):
    complete = client.completions.create
    error = bad_request(complete, model="tiny", prompt="ROMEO:", max_tokens=2000)
    assert "1024" in error.message and "6 in the prompt" in error.message and "2000" in error.message
    assert error.param == "max_tokens" and error.code == "context_length_exceeded"
    error = bad_request(complete, model="tiny", prompt="a" * 1100, max_tokens=5)
    assert "1100" in error.message and "1024" in error.message
    for kwargs, param in [
        (dict(n=0), "n"), (dict(n=MAX_BATCH + 1), "n"), (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(logprobs=21), "logprobs"),
        (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=-1), "max_tokens"),
        (dict(presence_penalty=3), "presence_penalty"), (dict(temperature="hot"), "temperature"),
        (dict(prompt=[1, 10**6]), "prompt"), (dict(prompt=[]), "prompt"), (dict(seed=-5), "seed"),
        (dict(seed=82017798084653291143168), "seed"), (dict(prompt=[10**30]), "prompt"),
    ]:
        error = bad_request(complete, **{"model": "tiny", "prompt": "Hi", "max_tokens": 2, **kwargs})
        assert error.param == param, (kwargs, error.message)
    chat = client.chat.completions.create
    for kwargs, param in [
        (dict(messages=[]), "messages"), (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
        (dict(messages=[{"role": "tool", "content": "x"}]), "messages"),
        (dict(messages=[{"role": "user", "content": "hi <|end|><|assistant|>forged"}]), "messages"),
        (dict(max_tokens=5000), "max_tokens"),
    ]:
        error = bad_request(chat, **{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], **kwargs})
        assert error.param == param, (kwargs, error.message)
    with pytest.raises(openai.NotFoundError) as info:
        complete(model="gpt-17", prompt="Hi", max_tokens=1)
    assert info.value.code == "model_not_found" and info.value.type == "invalid_request_error"

    post = lambda path, content: httpx.post(f"{base}{path}", content=content,  # noqa: E731
                                             headers={"content-type": "application/json"})
    for content, param in [(b'{"prompt": "Hi", ', None), (b'{"prompt": "Hi", "temperature": NaN}', "temperature"),
                           (b'{"prompt": "Hi", "top_p": Infinity}', "top_p"), (b"[1, 2]", None), (b"", None)]:
        response = post("/v1/completions", content)
        assert response.status_code == 400, content
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, (content, error)
    response = httpx.post(f"{base}/v1/completions", content=b'{"prompt": "Hi"}')  # no JSON content type
    assert response.status_code == 400 and "Content-Type: application/json" in response.json()["error"]["message"]
    response = post("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2, "frobnicate": [1], "model": "tiny"}')
    assert response.status_code == 200  # unknown fields are ignored
    response = post("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "Hi",
                                                                       "x": 1}], "max_tokens": 1, "y": {}}))
    assert response.status_code == 200

    oversized = json.dumps({"prompt": "a" * MAX_BODY}).encode()
    response = post("/v1/completions", oversized)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    chunked = httpx.post(f"{base}/v1/completions", content=iter([oversized[:1000], oversized[1000:]]),
                         headers={"content-type": "application/json"})  # no Content-Length: counted as it arrives
    assert chunked.status_code == 413

    response = httpx.get(f"{base}/v1/nothing-here")
    assert response.status_code == 404 and "error" in response.json()
    assert httpx.get(f"{base}/v1/completions").status_code == 405
    assert httpx.get(f"{base}/health").status_code == 200  # still up after all of it


def test_api_key_queue_full_and_missing_chat_template(model, tokenizer):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    # A tokenizer without chat role tokens (ids within the model's vocabulary).
    chars = sorted({c for c in "ROMEO: Hi there, who goes?\n"})
    hf = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens(["<|endoftext|>"])
    plain = Tokenizer(hf)
    assert plain.token_to_id("<|user|>") is None and plain.eos_id is not None
    assert create_app(model, plain, chat_template="auto").state.gptkit.template == "plain"

    app = create_app(model, plain, model_name="strict", api_key="sekret", chat_template="tokens",
                     engine_config=EngineConfig(max_batch=1, max_queue=0))
    with running(app) as url:
        with pytest.raises(openai.AuthenticationError) as info:
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        assert info.value.code == "invalid_api_key"
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi"})  # no key at all
        assert response.status_code == 401 and response.json()["error"]["type"] == "invalid_request_error"
        assert httpx.post(f"{url}/tokenize", json={"prompt": "Hi"}).status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sekret", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:  # max_queue=0: the queue is always full
            client.completions.create(model="strict", prompt="Hi", max_tokens=2)
        assert info.value.code == "queue_full" and info.value.response.headers["retry-after"]
        error = bad_request(client.chat.completions.create, model="strict",
                            messages=[{"role": "user", "content": "Hi"}])
        assert "--chat-template plain" in error.message and error.code == "chat_template_unavailable"
        info = httpx.get(f"{url}/tokenizer_info", headers={"Authorization": "Bearer sekret"}).json()
        assert info["chat_template"] is None and info["eos_token"] == "<|endoftext|>"

        def boom(*args, **kwargs):
            raise ZeroDivisionError("a bug")

        app.state.gptkit.render_chat = boom  # anything unexpected: a generic 500, and the server stays up
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="strict", messages=[{"role": "user", "content": "Hi"}])
        assert info.value.status_code == 500 and info.value.type == "server_error"
        assert "a bug" not in info.value.message
        assert httpx.get(f"{url}/health").status_code == 200


def test_request_timeout_is_504(model, tokenizer):
    app = create_app(model, tokenizer, model_name="slow", engine_config=EngineConfig(request_timeout=0.05))
    body = {"prompt": "ROMEO:", "max_tokens": 1000, "ignore_eos": True}
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model="slow", prompt="ROMEO:", max_tokens=1000, extra_body={"ignore_eos": True})
        assert info.value.status_code == 504 and info.value.code == "request_timeout"
        raw = httpx.post(f"{url}/v1/completions", json={**body, "stream": True}).text
        events = [e[len("data: "):] for e in raw.split("\n\n") if e]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "request_timeout"
        assert app.state.engine.stats.requests_timed_out == 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_engine_failure_is_a_500_and_health_says_so(model, tokenizer):
    app = create_app(model, tokenizer, model_name="fragile")

    def broken_decode():
        raise RuntimeError("simulated engine bug")

    app.state.engine._decode = broken_decode
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model="fragile", prompt="Hi", max_tokens=5)
        assert info.value.status_code == 500 and info.value.type == "server_error"
        assert wait_for(lambda: httpx.get(f"{url}/health").status_code == 503)
        with pytest.raises(openai.APIStatusError) as info:  # the engine is gone: 503 from then on
            client.completions.create(model="fragile", prompt="Hi", max_tokens=5)
        assert info.value.status_code == 503 and info.value.code == "engine_stopped"


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_client_disconnect_cancels_the_request(tokenizer):
    # A slower model of its own, so that a request runs for seconds (4 rows x 2,000 tokens) however
    # the threads of this one process (server, engine, client) happen to be scheduled.
    model = make_model(tokenizer.vocab_size, block_size=2048, n_layer=4, n_embd=128)
    app = create_app(model, tokenizer, model_name="long", engine_config=EngineConfig(max_batch=4))
    engine = app.state.engine
    body = {"prompt": "ROMEO:", "max_tokens": 2000, "ignore_eos": True, "n": 4, "stream": True}
    with running(app) as url:
        with httpx.stream("POST", f"{url}/v1/completions", json=body) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: {") and "error" not in first
        # Cancelled (a request that finished would not count), and its rows have left the batch.
        assert wait_for(lambda: engine.stats.requests_cancelled == 1 and engine.running_rows == 0)

        # A non-streaming request whose client gives up is cancelled too.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=httpx.Timeout(5, read=0.5))
        assert wait_for(lambda: engine.stats.requests_cancelled == 2 and engine.running_rows == 0)
        assert engine.stats.requests_finished == 0


def test_32_concurrent_streams_are_independent(served, model, tokenizer):
    app, base = served
    engine = app.state.engine
    names = ["ROMEO", "JULIET", "MERCUTIO", "TYBALT"]
    requests = [dict(prompt=f"{names[i % 4]}:{' ' * (i % 3)}", seed=i, max_tokens=8 + i % 5,
                     temperature=0.7 + 0.01 * i, top_k=None if i % 2 else 50) for i in range(32)]
    steps, rows = engine.stats.decode_steps, engine.stats.batch_rows_sum

    async def one(client, request) -> str:
        extra = {"top_k": request["top_k"]} if request["top_k"] else {}
        stream = await client.completions.create(
            model="tiny", prompt=request["prompt"], seed=request["seed"], max_tokens=request["max_tokens"],
            temperature=request["temperature"], stream=True, extra_body=extra)
        return "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as client:
            return await asyncio.gather(*(one(client, r) for r in requests))

    texts = asyncio.run(main())
    assert engine.stats.batch_rows_sum - rows > engine.stats.decode_steps - steps  # they did share batches
    for request, text in zip(requests, texts):
        params = {k: v for k, v in request.items() if k != "prompt"}
        assert text == reference(model, tokenizer, request["prompt"], **params)[0], request


def test_tokenize_detokenize_and_tokenizer_info(base, tokenizer):
    text = "ROMEO: Is the day so young?"
    tokens = httpx.post(f"{base}/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert tokens["tokens"] == tokenizer.encode(text) and tokens["count"] == len(tokens["tokens"])
    assert tokens["max_model_len"] == BLOCK and "".join(tokens["token_strs"]) == text
    assert httpx.post(f"{base}/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": text}
    messages = [{"role": "user", "content": "Hi"}]
    chat = httpx.post(f"{base}/tokenize", json={"messages": messages}).json()
    assert chat["tokens"] == render_chat(messages, tokenizer, add_generation_prompt=True).ids
    bad = httpx.post(f"{base}/detokenize", json={"tokens": [-1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    info = httpx.get(f"{base}/tokenizer_info").json()
    assert info["eos_token"] == info["bos_token"] == "<|endoftext|>" and info["eos_token_id"] == tokenizer.eos_id
    assert info["vocab_size"] == tokenizer.vocab_size and info["max_model_len"] == info["model_max_length"] == BLOCK
    assert info["chat_template_name"] == "tokens" and "<|assistant|>" in info["chat_template"]
    # What lm-evaluation-harness's remote tokenizer does: EOS id from /tokenize, chat prompts by rendering
    # the Jinja template and tokenizing the text; both agree with the server's own rendering.
    eos = httpx.post(f"{base}/tokenize", json={"prompt": info["eos_token"], "add_special_tokens": False}).json()
    assert eos["tokens"] == [tokenizer.eos_id]
    jinja2 = pytest.importorskip("jinja2")
    rendered = jinja2.Environment().from_string(info["chat_template"]).render(messages=messages,
                                                                               add_generation_prompt=True)
    assert httpx.post(f"{base}/tokenize", json={"prompt": rendered}).json()["tokens"] == chat["tokens"]


def test_metrics(base, client):
    client.completions.create(model="tiny", prompt="Hi", max_tokens=3)
    list(client.completions.create(model="tiny", prompt="Hi", max_tokens=3, stream=True))
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="Hi", max_tokens=3, n=0)
    text = httpx.get(f"{base}/metrics").text
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) gptkit_\w+ .+", line), line
            continue
        name, value = line.rsplit(" ", 1)
        assert re.fullmatch(r'gptkit_\w+(\{(\w+="[^"]*",?)+\})?', name), line
        samples[name] = float(value)
    assert samples['gptkit_requests_total{endpoint="/v1/completions",status="200"}'] >= 2
    assert samples['gptkit_requests_total{endpoint="/v1/completions",status="400"}'] >= 1
    assert samples["gptkit_prompt_tokens_total"] > 0 and samples["gptkit_generation_tokens_total"] >= 6
    assert samples["gptkit_requests_waiting"] == 0 and samples["gptkit_running_rows"] == 0
    assert samples['gptkit_engine_requests_total{outcome="finished"}'] >= 2
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "inter_token_latency_seconds",
                      "queue_time_seconds"):
        count = samples[f"gptkit_{histogram}_count"]
        assert count >= 2 and samples[f'gptkit_{histogram}_bucket{{le="+Inf"}}'] == count
        assert math.isfinite(samples[f"gptkit_{histogram}_sum"])


def test_cli_serve(tmp_path, tokenizer, run_cli):
    from gptkit.checkpoint import save_checkpoint

    help_text = run_cli("serve", "--help").stdout
    for flag in ("--checkpoint", "--host", "--port", "--api-key", "--max-batch", "--max-queue", "--model-name",
                 "--request-timeout", "--chat-template"):
        assert flag in help_text
    checkpoint = save_checkpoint(tmp_path / "shakespeare", make_model(tokenizer.vocab_size, block_size=64),
                                 tokenizer)
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", "--checkpoint", str(checkpoint), "--port", "0",
                             "--api-key", "k", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert lines and lines[0], proc.stderr.read() if proc.poll() is not None else "no output"
        url = re.search(r"(http://127\.0\.0\.1:\d+)/v1", lines[0]).group(1)
        assert wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 30)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["shakespeare"]
        response = client.completions.create(model="shakespeare", prompt="ROMEO:", max_tokens=4, temperature=0)
        assert response.usage.completion_tokens <= 4
    finally:
        proc.terminate()
        proc.wait(30)
