"""Chat with images and audio: `gptkit serve` over a multimodal checkpoint, driven by the real `openai` client on
loopback, against `LLM.chat` with the same media; the media errors; `gptkit chat --image` and `gptkit serve`.

Small random checkpoints (a 2-layer, 32-wide GPT with a 128-token context): an image one (a CNN encoder, 49
tokens per 28x28 picture), an audio one (1 s clips, 10 tokens each), a cross-fusion one and a text-only one.
A random model's reply hardly depends on its media, so the tests show the server path reads them through
the log-probabilities (they equal the local ones, and change with the image) and usage.prompt_tokens.
"""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gptkit.api import LLM  # noqa: E402
from gptkit.chat_format import chat_stop_token_ids, render_chat  # noqa: E402
from gptkit.checkpoint import save_checkpoint  # noqa: E402
from gptkit.config import ModelConfig  # noqa: E402
from gptkit.data.audio import bundled_audio  # noqa: E402
from gptkit.data.images import bundled_mnist  # noqa: E402
from gptkit.finetune.multimodal import build_multimodal  # noqa: E402
from gptkit.inference.generate import generate  # noqa: E402
from gptkit.inference.sampling import SamplingParams  # noqa: E402
from gptkit.models.audio import AudioConfig  # noqa: E402
from gptkit.models.gpt import GPT  # noqa: E402
from gptkit.models.multimodal import MultimodalConfig  # noqa: E402
from gptkit.models.projector import ProjectorConfig  # noqa: E402
from gptkit.models.vision import VisionConfig  # noqa: E402
from gptkit.serve.app import create_app  # noqa: E402
from gptkit.serve.engine import Engine, EngineConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402
from test_serve import running  # noqa: E402

MAX_MEDIA = 20_000
IMAGE_CONFIG = MultimodalConfig(fusion="early", vision=VisionConfig(kind="cnn", n_embd=32, n_layer=0))  # 49 tokens
AUDIO_CONFIG = MultimodalConfig(fusion="early", modality="audio", clip_seconds=1.0,
                                audio=AudioConfig(n_embd=32, n_layer=1, n_head=2), projector=ProjectorConfig("pool", 5))


def gpt(tokenizer: Tokenizer, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_char(["digit: 0123456789 What is this? Which number is it? <image>"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("multimodal")
    # seeds of random models whose greedy replies below are not empty, so that comparing texts compares something
    save_checkpoint(root / "image", build_multimodal(gpt(tokenizer, 0), IMAGE_CONFIG), tokenizer)
    save_checkpoint(root / "audio", build_multimodal(gpt(tokenizer, 4), AUDIO_CONFIG), tokenizer)
    cross = MultimodalConfig(fusion="cross", vision=VisionConfig(kind="cnn", n_embd=32, n_layer=0))
    save_checkpoint(root / "cross", build_multimodal(gpt(tokenizer, 0), cross), tokenizer)
    save_checkpoint(root / "text", gpt(tokenizer, 0), tokenizer)
    return root


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_part(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def audio_part(data: bytes, fmt: str) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Two real MNIST digits (a 0 and a 7) as PNG files."""
    images, labels = bundled_mnist()
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i in (0, 3500):
        paths.append(folder / f"digit{labels[i]}.png")
        paths[-1].write_bytes(png(images[i]))
    return paths


def served(llm: LLM, name: str, **options):
    return running(create_app(llm.model, llm.tokenizer, model_name=name, multimodal=llm.multimodal,
                              engine_config=EngineConfig(max_batch=8), **options))


@pytest.fixture(scope="module")
def image_server(checkpoints):
    llm = LLM.load(checkpoints / "image")
    with served(llm, "img", max_media_bytes=MAX_MEDIA) as base:
        yield llm, base, openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def local_reply(llm: LLM, messages: list[dict], max_tokens: int, top: int):
    """The greedy reply and its logprobs, computed here from `LLM.chat_prompt` (what `LLM.chat` decodes)."""
    ids, embeds = llm.chat_prompt(messages)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=top,
                            stop_token_ids=chat_stop_token_ids(llm.tokenizer))
    (completion,) = generate(llm.model, llm.tokenizer, [ids], params, prompt_embeds=[embeds])
    return completion, ids, embeds


def test_an_image_url_part_is_read_where_it_is_as_llm_chat_reads_it(image_server, digits, tokenizer):
    llm, _, client = image_server
    zero, seven = (path.read_bytes() for path in digits)

    def ask(image: dict) -> list[dict]:
        return [{"role": "user", "content": [{"type": "text", "text": "What is this? "}, image,
                                             {"type": "text", "text": " digit:"}]}]

    response = client.chat.completions.create(model="img", messages=ask(image_part(zero)), max_tokens=8,
                                              temperature=0, logprobs=True, top_logprobs=3)
    reply = response.choices[0].message.content
    # LLM.chat with the same picture as a file, as an array, or as the same data URL: the same reply
    assert reply == llm.chat(ask({"type": "image", "image": str(digits[0])}), max_tokens=8, temperature=0)
    pixels = np.asarray(Image.open(digits[0]), dtype=np.float32)[None] / 255.0
    assert reply == llm.chat(ask({"type": "image", "image": pixels}), max_tokens=8, temperature=0)
    expected, ids, embeds = local_reply(llm, ask(image_part(zero)), 8, 3)
    assert reply == expected.text and len(reply) > 0
    served_logprobs = [t.logprob for t in response.choices[0].logprobs.content]
    assert served_logprobs == pytest.approx([lp.logprob for lp in expected.logprobs], abs=1e-4)
    # the prompt as the model reads it: the text's tokens and the picture's 49
    text_only = render_chat([{"role": "user", "content": "What is this?  digit:"}], tokenizer,
                            add_generation_prompt=True).ids
    assert response.usage.prompt_tokens == len(ids) == len(text_only) + IMAGE_CONFIG.media_tokens
    slot = len(render_chat([{"role": "user", "content": "What is this? "}], tokenizer,
                           add_generation_prompt=True).ids) - 2  # before <|end|><|assistant|>
    assert ids[slot:slot + 49] == [0] * 49 and ids[slot - 1] == tokenizer.encode(" ")[0]

    # another digit: other input embeddings at those slots only, other log-probabilities from the server
    _, other_ids, other_embeds = local_reply(llm, ask(image_part(seven)), 8, 3)
    assert other_ids == ids and torch.equal(other_embeds[:slot], embeds[:slot])
    assert not torch.allclose(other_embeds[slot:slot + 49], embeds[slot:slot + 49])
    other = client.chat.completions.create(model="img", messages=ask(image_part(seven)), max_tokens=8,
                                           temperature=0, logprobs=True)
    assert abs(other.choices[0].logprobs.content[0].logprob - served_logprobs[0]) > 1e-6

    # streamed: the same text and usage
    chunks = list(client.chat.completions.create(model="img", messages=ask(image_part(zero)), max_tokens=8,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
    assert chunks[-1].usage.prompt_tokens == response.usage.prompt_tokens

    # "<image>" typed as text is text: no media slots, and an image-less chat works as before
    typed = client.chat.completions.create(model="img", max_tokens=2, temperature=0,
                                           messages=[{"role": "user", "content": "<image> digit:"}])
    assert typed.usage.prompt_tokens == len(render_chat([{"role": "user", "content": "<image> digit:"}], tokenizer,
                                                        add_generation_prompt=True).ids)


def test_an_input_audio_part_is_read_as_llm_chat_reads_it(checkpoints, tokenizer):
    llm = LLM.load(checkpoints / "audio")
    seven, three = bundled_audio("symbols_math_7_en_GB"), bundled_audio("symbols_math_3_en_GB")

    def ask(part: dict) -> list[dict]:
        return [{"role": "user", "content": [part, {"type": "text", "text": "Which number is it?"}]}]

    with served(llm, "ears") as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        response = client.chat.completions.create(model="ears", messages=ask(audio_part(seven.read_bytes(), "ogg")),
                                                  max_tokens=6, temperature=0, logprobs=True)
        other = client.chat.completions.create(model="ears", messages=ask(audio_part(three.read_bytes(), "ogg")),
                                               max_tokens=6, temperature=0, logprobs=True)
        streamed = client.chat.completions.create(model="ears", messages=ask(audio_part(seven.read_bytes(), "ogg")),
                                                  max_tokens=6, temperature=0, stream=True)
        streamed_text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    reply = response.choices[0].message.content
    assert reply == streamed_text == llm.chat(ask({"type": "audio", "audio": str(seven)}), max_tokens=6,
                                              temperature=0) != ""
    expected, ids, _ = local_reply(llm, ask({"type": "audio", "audio": str(seven)}), 6, 0)
    assert [t.logprob for t in response.choices[0].logprobs.content] == pytest.approx(
        [lp.logprob for lp in expected.logprobs], abs=1e-4)
    assert abs(other.choices[0].logprobs.content[0].logprob - expected.logprobs[0].logprob) > 1e-6
    text_only = render_chat([{"role": "user", "content": "Which number is it?"}], tokenizer,
                            add_generation_prompt=True).ids
    assert response.usage.prompt_tokens == len(ids) == len(text_only) + AUDIO_CONFIG.media_tokens == len(text_only) + 10


def test_media_and_text_prompts_decode_in_one_batch(checkpoints, digits):
    llm = LLM.load(checkpoints / "image")
    tokenizer = llm.tokenizer
    params = SamplingParams(max_tokens=6, temperature=0, stop_token_ids=[])  # no stop: 6 tokens each
    media_ids, embeds = llm.chat_prompt([{"role": "user", "content": [{"type": "image", "image": str(digits[1])},
                                                                      {"type": "text", "text": "digit:"}]}])
    text_ids = render_chat([{"role": "user", "content": "digit:"}], tokenizer, add_generation_prompt=True).ids
    alone = [generate(llm.model, tokenizer, [media_ids], params, prompt_embeds=[embeds])[0].token_ids,
             generate(llm.model, tokenizer, [text_ids], params)[0].token_ids]
    engine = Engine(llm.model, tokenizer, EngineConfig(max_batch=4))
    handles = [engine.submit(media_ids, params, prompt_embeds=embeds), engine.submit(text_ids, params)]
    with engine:  # both wait before the worker starts, so they are admitted (and decoded) together
        together = [handle.result()[0].token_ids for handle in handles]
    assert together == alone
    assert engine.stats.batch_rows_sum == 2 * engine.stats.decode_steps  # every step decoded both rows
    assert handles[0].stats.prompt_tokens == len(media_ids) == len(text_ids) + 49


def error(base: str, messages: list[dict], path: str = "/v1/chat/completions") -> tuple[int, dict]:
    body = {"messages": messages, "max_tokens": 2}
    response = httpx.post(f"{base}{path}", json=body, timeout=30)
    payload = response.json()
    assert set(payload["error"]) == {"message", "type", "param", "code"} and "Traceback" not in response.text
    return response.status_code, payload["error"]


def test_media_errors_are_openai_shaped_400s_and_413s(image_server, checkpoints, digits):
    _, base, _ = image_server
    digit = digits[0].read_bytes()

    def user(*parts) -> list[dict]:
        return [{"role": "user", "content": [{"type": "text", "text": "digit:"}, *parts]}]

    cases = [
        (user({"type": "image_url", "image_url": {"url": "https://example.com/seven.png"}}), 400, "only data URLs"),
        (user({"type": "image_url", "image_url": {"url": "data:image/png;base64"}}), 400,
         "messages[0].content[1] (image_url) is a malformed data URL"),
        (user({"type": "image_url", "image_url": {"url": "data:image/png;base64,not*base64!"}}), 400,
         "messages[0].content[1] (image_url) is not valid base64"),
        (user(image_part(b"not a picture at all")), 400, "messages[0].content[1] (image_url) is not a readable image"),
        (user(image_part(digit, "text/plain")), 400, "not of an image"),
        (user(audio_part(b"RIFF....", "wav")), 400, "this checkpoint reads images, not audio"),
        (user(audio_part(digit, "aiff")), 400, "format must be one of wav, mp3, ogg, flac"),
        (user(*[image_part(digit)] * 3), 400,
         "with its 3 image item(s) (49 tokens each) but the model's context length is 128"),
        ([{"role": "system", "content": [image_part(digit)]}, {"role": "user", "content": "digit:"}], 400,
         "messages[0].content[0] is image_url content in the system message 0; media go in user messages only"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [image_part(digit)]},
          {"role": "user", "content": "digit:"}], 400, "in the assistant message 1"),
        (user({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}), 400, "has type 'video_url'"),
    ]
    for messages, status, message in cases:
        code, body = error(base, messages)
        assert (code, body["type"]) == (status, "invalid_request_error") and message in body["message"], body
        assert body["param"] == "messages"
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)  # ~43 KB: it hardly compresses
    code, body = error(base, user(image_part(png(noise))))
    assert code == 413 and body["code"] == "media_too_large" and f"{MAX_MEDIA:,}" in body["message"]
    code, body = error(base, user(image_part(digit)), path="/tokenize")
    assert code == 400 and "only text content parts" in body["message"]

    with served(LLM.load(checkpoints / "text"), "text") as text_base, \
            served(LLM.load(checkpoints / "cross"), "cross") as cross_base:
        code, body = error(text_base, user(image_part(digit)))
        assert code == 400 and "this checkpoint is text-only: it cannot take images" in body["message"]
        code, body = error(cross_base, user(image_part(digit)))
        assert code == 400 and "needs an early-fusion checkpoint" in body["message"]
        ok = httpx.post(f"{text_base}/v1/chat/completions", json={"messages": user(), "max_tokens": 2})
        assert ok.status_code == 200  # a text chat is unchanged
    assert httpx.get(f"{base}/health").status_code == 200


def test_gptkit_chat_attaches_media_to_the_first_message_and_gptkit_serve_takes_them(checkpoints, digits, run_cli):
    audio = checkpoints / "audio"
    seven = bundled_audio("symbols_math_7_en_GB")
    result = run_cli("chat", "--checkpoint", str(audio), "--audio", str(seven), "--max-tokens", "6",
                     "--temperature", "0", input="Which number is it?\nAnd this?\n")
    first = [{"role": "user", "content": [{"type": "audio", "audio": str(seven)},
                                          {"type": "text", "text": "Which number is it?"}]}]
    llm = LLM.load(audio)
    reply = llm.chat(first, max_tokens=6, temperature=0)
    second = llm.chat([*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "And this?"}],
                      max_tokens=6, temperature=0)
    assert result.stdout.split("\n")[:2] == [reply, second] and reply

    image = checkpoints / "image"
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", "--checkpoint", str(image), "--port", "0",
                             "--model-name", "eyes", "--max-media-bytes", "2000", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert lines and lines[0], proc.stderr.read() if proc.poll() is not None else "no output"
        url = re.search(r"(http://127\.0\.0\.1:\d+)/v1", lines[0]).group(1)
        noise = np.random.default_rng(0).integers(0, 256, (60, 60), dtype=np.uint8)  # ~3.7 KB
        code, body = error(url, [{"role": "user", "content": [image_part(png(noise))]}])
        assert code == 413 and "--max-media-bytes" in body["message"]
        ask = [{"role": "user", "content": [{"type": "text", "text": "What is this? "}, image_part(digits[1].read_bytes()),
                                            {"type": "text", "text": " digit:"}]}]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        response = client.chat.completions.create(model="eyes", messages=ask, max_tokens=4, temperature=0)
        assert response.choices[0].message.content == LLM.load(image).chat(ask, max_tokens=4, temperature=0)
        assert response.usage.prompt_tokens > 49
    finally:
        proc.terminate()
        proc.wait(30)
