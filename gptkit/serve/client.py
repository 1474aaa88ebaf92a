"""Talk to a model the same way whether it is loaded here or served elsewhere: `gptkit chat` and `complete`.

    backend = LocalBackend(LLM.load("out/pretrain/tiny"))            # or RemoteBackend("http://127.0.0.1:8000")
    for piece in backend.complete("ROMEO:", max_tokens=50, temperature=0.8):
        print(piece, end="")
    for piece in backend.chat([{"role": "user", "content": "What is a hacker?"}], max_tokens=80):
        print(piece, end="")

`RemoteBackend` speaks the OpenAI API (`/v1/completions`, `/v1/chat/completions` with `stream: true`)
over plain HTTP, so it works against `gptkit serve` and any OpenAI-compatible server. Media parts given
as files ({"type": "image", "image": "seven.png"}, {"type": "audio", "audio": "seven.wav"}, what `gptkit chat
--image/--audio` sends) go to a local model as they are and to a server as OpenAI's parts (`openai_parts`:
an image_url data URL, an input_audio part).
"""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from gptkit.errors import GptkitError, require

AUDIO_FORMATS = {".wav": "wav", ".mp3": "mp3", ".ogg": "ogg", ".flac": "flac"}


def openai_parts(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with media parts given as files turned into OpenAI's content parts: an image file into an
    image_url part holding its data URL, an audio file (wav, mp3, ogg, flac) into an input_audio part."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [_openai_part(part) for part in content]
        out.append({**message, "content": content})
    return out


def _openai_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind not in ("image", "audio", "video"):
        return part
    path = part.get(kind)
    require(isinstance(path, (str, Path)), f"a {kind} for a server must be a file path (got {type(path).__name__})")
    require(kind != "video", "an OpenAI-compatible server takes images and audio, not video")
    path = Path(path)
    require(path.is_file(), f"{kind} {path} is not a file")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    if kind == "image":
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        require(mime.startswith("image/"), f"{path} does not look like an image ({mime})")
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
    fmt = AUDIO_FORMATS.get(path.suffix.lower())
    require(fmt is not None, f"{path}: a server takes {', '.join(sorted(set(AUDIO_FORMATS.values())))} audio files")
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


class Backend(Protocol):
    def complete(self, prompt: str, **sampling: Any) -> Iterator[str]:
        """Text pieces of one completion of `prompt`."""

    def chat(self, messages: Sequence[dict[str, Any]], **sampling: Any) -> Iterator[str]:
        """Text pieces of the assistant's next message."""


class LocalBackend:
    """A model in this process, through the one sampler (`gptkit.inference`)."""

    def __init__(self, llm: Any, chat_template: str = "auto") -> None:
        self.llm = llm  # a gptkit.LLM: chat renders through gptkit.chat_format, as the server does
        self.template = chat_template

    def complete(self, prompt: str, **sampling: Any) -> Iterator[str]:
        return self.llm.stream(prompt, **sampling)

    def chat(self, messages: Sequence[dict[str, Any]], **sampling: Any) -> Iterator[str]:
        return self.llm.chat_stream(messages, chat_template=self.template, **sampling)


class RemoteBackend:
    """An OpenAI-compatible server (e.g. `gptkit serve`), streaming over HTTP."""

    def __init__(self, url: str, *, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0) -> None:
        import httpx

        self.base = url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        models = self._json(self.http.get(f"{self.base}/models"))["data"]
        require(models, f"{self.base}/models lists no model")
        return models[0]["id"]

    def _json(self, response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise GptkitError(f"{response.request.url} answered {response.status_code}: {message}")
        return response.json()

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            with self.http.stream("POST", f"{self.base}/{path}", json={**body, "stream": True}) as response:
                if response.status_code >= 400:
                    response.read()
                    self._json(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        return
                    yield json.loads(data)
        except httpx.HTTPError as e:
            raise GptkitError(f"cannot reach {self.base}: {e}") from None

    def complete(self, prompt: str, **sampling: Any) -> Iterator[str]:
        for chunk in self._stream("completions", {"model": self.model, "prompt": prompt, **sampling}):
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    yield choice["text"]

    def chat(self, messages: Sequence[dict[str, Any]], **sampling: Any) -> Iterator[str]:
        for chunk in self._stream("chat/completions", {"model": self.model, "messages": openai_parts(messages),
                                                      **sampling}):
            for choice in chunk.get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    yield content
