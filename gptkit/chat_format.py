"""The chat format, one place for all users of chat: conversations, templates, role tokens, stop tokens.

Training (`gptkit.data.chat`, SFT), inference (`LLM.chat`), the server (`/v1/chat/completions`, the
Jinja template it publishes), the terminal client and the Hugging Face export all render through this
module. Knows nothing of models, files or HTTP.

A conversation is a list of messages `{"role": "system"|"user"|"assistant", "content": str}` (the
OpenAI format). A system message may only come first.

Chat with media (a multimodal checkpoint): a user message's content may be a list of content parts,
OpenAI's `{"type": "text", "text"}`, `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`
and `{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"}}`, or in Python
`{"type": "image"|"audio"|"video", "image"|...: a file path or an array}`. `content_parts` turns them into
gptkit's parts (text, adjacent texts merged; media, data URLs decoded to bytes; only data URLs: nothing
is fetched), and `render_chat(..., media_slots={"image": [MEDIA_SLOT] * 16})` puts each media part's
slots where the part was. Slots come from media parts only: a user who types "<image>" gets the text
"<image>", so no text can forge a media slot. Media in system and assistant messages are refused.

Templates (`template=`):

- "tokens" (default) uses the role tokens every gptkit tokenizer reserves (gptkit.tokenizer.CHAT_TOKENS):
      <|endoftext|><|system|>{system}<|end|><|user|>{user}<|end|><|assistant|>{assistant}<|end|>
  BOS first (when the tokenizer has one: a chat is a new document, as after an EOS in pretraining),
  then per message its role token, its content's tokens and <|end|>. No newlines: every token counts in
  a small context window. A generation prompt ends with <|assistant|>; the model stops at <|end|>.
  A tokenizer without these tokens (e.g. the bundled GPT-2 one, or an imported one) is an error that
  says what to do: use a gptkit char/BPE tokenizer (`gptkit prepare`), or template="plain".
- "plain", the fallback for tokenizers without role tokens: plain text
      <|endoftext|>System: {system}\\nUser: {user}\\nAssistant: {assistant}<|endoftext|>\\n
  An assistant turn ends with the EOS token (the generator's default stop token), or with "\\n" when
  the tokenizer has no EOS. A generation prompt ends with "Assistant:".

The mask (`assistant_mask[i]`: is `ids[i]` a training target?) is True exactly on the tokens of
assistant content and on the end-of-turn token that closes an assistant turn (so the model learns to
stop), False on BOS, role markers, system and user turns. The pieces (markers, contents) are encoded
separately, so a merge never straddles a role boundary; generate from the rendered `ids` to see exactly
what training saw. Content holding a reserved token's text (e.g. "<|end|>") is an error: the tokenizer
would turn it into the control token and let the text forge turns.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote_to_bytes

from gptkit.errors import GptkitError, require
from gptkit.tokenizer import CHAT_TOKENS, SPECIAL_TOKENS, Tokenizer

Message = dict[str, Any]
"""{"role": ..., "content": ...}: content a string, or (chat with media) a list of content parts."""
Conversation = list[Message]
Part = dict[str, Any]
Template = Literal["tokens", "plain"]
ChatTemplate = Literal["auto", "tokens", "plain"]

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = dict(zip(ROLES, CHAT_TOKENS[:3]))  # role -> its marker token
END_OF_TURN = CHAT_TOKENS[3]
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
MEDIA_TYPES = ("image", "audio", "video")
AUDIO_FORMATS = ("wav", "mp3", "ogg", "flac")


class MediaTooLarge(GptkitError):
    """A media part's payload is larger than the limit it was read under (the server answers 413)."""


class RenderedChat(NamedTuple):
    """Token ids of a rendered conversation and, per token, whether it is a training target."""

    ids: list[int]
    assistant_mask: list[bool]


def validate_conversation(messages: Any, where: str = "conversation", *, require_assistant: bool = True,
                          media: bool = False, max_media_bytes: int | None = None) -> Conversation:
    """`messages` checked to be a conversation; errors start with `where` (e.g. "data.jsonl line 3").

    media: a content may also be a list of content parts (`content_parts`; a list of text parts alone becomes
    their text, so it renders exactly as that string would); max_media_bytes: the largest media payload.
    """
    require(isinstance(messages, list), f"{where}: messages must be a list, found {type(messages).__name__}")
    require(len(messages) > 0, f"{where}: empty messages list")
    out: Conversation = []
    for i, message in enumerate(messages, start=1):
        require(isinstance(message, dict), f"{where}: message {i} must be an object with 'role' and 'content'")
        role = message.get("role")
        require(role in ROLES, f"{where}: message {i} has unknown role {role!r}; roles are {', '.join(ROLES)}")
        require(role != "system" or i == 1, f"{where}: message {i} is a system message; it may only come first")
        content = message.get("content")
        require(content is not None, f"{where}: message {i} ({role}) has no content")
        if media and isinstance(content, list):
            parts = content_parts(content, i - 1, role, max_media_bytes=max_media_bytes)
            if all(p["type"] == "text" for p in parts):
                content = "".join(p["text"] for p in parts)
            else:
                content = parts
        else:
            require(isinstance(content, str), f"{where}: message {i} ({role}) content must be a string"
                                              + (" or a list of content parts" if media else ""))
        require(not isinstance(content, str) or content.strip() != "", f"{where}: message {i} ({role}) has empty content")
        out.append({"role": role, "content": content})
    require(not require_assistant or any(m["role"] == "assistant" for m in out),
            f"{where}: the conversation has no assistant turn, so there is nothing to train on")
    return out


def content_parts(content: Sequence[Any], message: int, role: str, *,
                  max_media_bytes: int | None = None) -> list[Part]:
    """Message `message`'s (0-based, for errors) content parts as gptkit's: {"type": "text", "text"} (adjacent
    texts merged) and media parts {"type": "image"|"audio"|"video", TYPE: payload, "where": "messages[i].content[j]
    (image_url)"} (the part named, for errors).

    An image_url part (a data URL, base64 or percent-encoded) and an input_audio part (base64 `data` of a wav,
    mp3, ogg or flac file) give their decoded bytes; a Python part's payload (a file path, an array) stays as it
    is. A remote URL is refused (nothing is fetched). A payload over `max_media_bytes` raises `MediaTooLarge`.
    Media parts are accepted in user messages only.
    """
    require(len(content) > 0, f"messages[{message}] ({role}) has an empty list of content parts")
    parts: list[Part] = []
    for j, part in enumerate(content):
        where = f"messages[{message}].content[{j}]"
        require(isinstance(part, Mapping), f"{where} must be an object with a 'type'")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            require(isinstance(text, str), f"{where} (text) needs 'text', a string")
            if parts and parts[-1]["type"] == "text":
                parts[-1] = {"type": "text", "text": parts[-1]["text"] + text}
            else:
                parts.append({"type": "text", "text": text})
            continue
        require(kind in ("image_url", "input_audio", *MEDIA_TYPES),
                f"{where} has type {kind!r}; content parts are text, image_url (a data URL) and input_audio "
                "(and in Python image, audio and video, with a file path or an array)")
        require(role == "user", f"{where} is {kind} content in the {role} message {message}; media go in user "
                                "messages only")
        if kind == "image_url":
            named = f"{where} (image_url)"
            parts.append({"type": "image", "image": _image_url_bytes(part.get("image_url"), named, max_media_bytes),
                          "where": named})
        elif kind == "input_audio":
            named = f"{where} (input_audio)"
            parts.append({"type": "audio", "audio": _input_audio_bytes(part.get("input_audio"), named,
                                                                       max_media_bytes), "where": named})
        else:
            named, payload = part.get("where") or f"{where} ({kind})", part.get(kind)
            require(payload is not None, f"{named} needs {kind!r}: a file path or an array")
            if isinstance(payload, (bytes, bytearray)):
                _check_size(len(payload), named, max_media_bytes)
            parts.append({"type": kind, kind: payload, "where": named})
    return parts


def media_parts(conversation: Sequence[Message]) -> list[Part]:
    """The media parts of a conversation (from `validate_conversation(media=True)`), in the order they render."""
    return [p for m in conversation if not isinstance(m["content"], str) for p in m["content"] if p["type"] != "text"]


def _check_size(size: int, what: str, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise MediaTooLarge(f"{what} is {size:,} bytes, more than the limit of {limit:,} bytes per media item")


def _base64_bytes(payload: Any, what: str, limit: int | None) -> bytes:
    require(isinstance(payload, str), f"{what}: the data must be a base64 string")
    text = "".join(payload.split())
    _check_size(len(text) // 4 * 3 - 2, what, limit)  # refuse from its length, before decoding
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise GptkitError(f"{what} is not valid base64") from None
    require(len(data) > 0, f"{what} is empty")
    _check_size(len(data), what, limit)
    return data


def _image_url_bytes(value: Any, what: str, limit: int | None) -> bytes:
    url = value.get("url") if isinstance(value, Mapping) else value
    require(isinstance(url, str) and url != "", f"{what} needs image_url.url: a data URL (data:image/png;base64,...)")
    scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
    if scheme in ("http", "https", "ftp"):
        raise GptkitError(f"{what} is a remote URL ({url[:60]}); only data URLs are accepted "
                          "(data:image/png;base64,...): remote images are not fetched")
    require(scheme == "data", f"{what} must be a data URL (data:image/png;base64,...), got {url[:40]!r}")
    header, comma, payload = url.split(":", 1)[1].partition(",")
    require(comma == ",", f"{what} is a malformed data URL: no ',' between its header and its data")
    media_type, *params = [p.strip().lower() for p in header.split(";")]
    require(media_type == "" or media_type.startswith("image/"),
            f"{what} is a data URL of {media_type!r}, not of an image (image/png, image/jpeg, ...)")
    if "base64" in params:
        return _base64_bytes(payload, what, limit)
    data = unquote_to_bytes(payload)
    require(len(data) > 0, f"{what} is empty")
    _check_size(len(data), what, limit)
    return data


def _input_audio_bytes(value: Any, what: str, limit: int | None) -> bytes:
    require(isinstance(value, Mapping), f"{what} needs input_audio: {{\"data\": BASE64, \"format\": \"wav\"}}")
    fmt = value.get("format")
    require(fmt in AUDIO_FORMATS, f"{what}: format must be one of {', '.join(AUDIO_FORMATS)}, got {fmt!r}")
    return _base64_bytes(value.get("data"), what, limit)


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer reserves the role tokens the "tokens" template needs."""
    return all(tokenizer.token_to_id(t) is not None for t in CHAT_TOKENS)


def resolve_chat_template(tokenizer: Tokenizer, requested: ChatTemplate = "auto") -> Template:
    """auto: the role-token template when the tokenizer has its tokens, else the plain-text one."""
    require(requested in ("auto", "tokens", "plain"), f"unknown chat template {requested!r}: auto, tokens or plain")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    return "tokens" if has_chat_tokens(tokenizer) else "plain"


def _reserved_strings(tokenizer: Tokenizer) -> list[str]:
    """Texts the tokenizer turns into control tokens."""
    specials = {*SPECIAL_TOKENS, *(t for t in vars(tokenizer.special).values() if t is not None)}
    return sorted(t for t in specials if tokenizer.token_to_id(t) is not None)


def _chat_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    ids = {token: tokenizer.token_to_id(token) for token in CHAT_TOKENS}
    missing = [token for token, i in ids.items() if i is None]
    require(not missing,
            f"this tokenizer has no chat tokens (missing {' '.join(missing)}): prepare or train the tokenizer with "
            "gptkit (`gptkit prepare --tokenizer char|bpe`: its tokenizers reserve them), or render with "
            "template='plain' (a text template, 'User: ...\\nAssistant: ...', that needs no special tokens)")
    return ids  # type: ignore[return-value]


def render_chat(messages: Sequence[Message], tokenizer: Tokenizer, add_generation_prompt: bool = False, *,
                template: Template = "tokens", media_slots: Mapping[str, Sequence[int]] | None = None) -> RenderedChat:
    """(ids, assistant_mask) of a conversation; see the module docstring for the templates and the mask.

    With `add_generation_prompt` the ids end with the assistant's marker, ready for generation, and the
    conversation need not hold an assistant turn. media_slots: for content parts (see `content_parts`), the
    ids each media part of a type renders as (e.g. {"image": [MEDIA_SLOT] * 16}); text around them is
    encoded piece by piece, so no merge straddles a media part.
    """
    require(template in ("tokens", "plain"), f"unknown chat template {template!r}; use 'tokens' or 'plain'")
    conversation = validate_conversation(list(messages), require_assistant=not add_generation_prompt, media=True)
    reserved = _reserved_strings(tokenizer)
    for i, message in enumerate(conversation, start=1):
        found = [t for t in reserved if any(t in text for text in _segments(message["content"]) if isinstance(text, str))]
        if found:
            raise GptkitError(f"message {i} ({message['role']}) contains the reserved token text {found[0]!r}; "
                              "remove it (the tokenizer would read it as a control token)")
    ids: list[int] = []
    mask: list[bool] = []

    def add(piece: list[int], trained: bool) -> None:
        ids.extend(piece)
        mask.extend([trained] * len(piece))

    def add_content(content: str | list[Part], trained: bool, lead: str = "") -> None:
        for k, segment in enumerate(_segments(content)):
            if isinstance(segment, str):
                add(tokenizer.encode((lead if k == 0 else "") + segment), trained)
                continue
            if k == 0 and lead:
                add(tokenizer.encode(lead), False)
            slots = (media_slots or {}).get(segment["type"])
            require(slots is not None, f"{segment['where']} is {segment['type']} content, but no media slots for "
                                       f"{segment['type']} were given (render_chat's media_slots)")
            add(list(slots), False)  # never a target: the model reads media, it does not write them

    if tokenizer.bos_id is not None:
        add([tokenizer.bos_id], False)
    if template == "tokens":
        special = _chat_token_ids(tokenizer)
        for message in conversation:
            trained = message["role"] == "assistant"
            add([special[ROLE_TOKENS[message["role"]]]], False)
            add_content(message["content"], trained)
            add([special[END_OF_TURN]], trained)
        if add_generation_prompt:
            add([special[ROLE_TOKENS["assistant"]]], False)
    else:
        newline = tokenizer.encode("\n")
        for message in conversation:
            trained = message["role"] == "assistant"
            add(tokenizer.encode(f"{PLAIN_NAMES[message['role']]}:"), False)
            add_content(message["content"], trained, lead=" ")
            if trained and tokenizer.eos_id is not None:
                add([tokenizer.eos_id], True)
                add(newline, False)
            else:
                add(newline, trained)
        if add_generation_prompt:
            add(tokenizer.encode(f"{PLAIN_NAMES['assistant']}:"), False)
    return RenderedChat(ids, mask)


def _segments(content: str | list[Part]) -> list[str | Part]:
    """A content as what renders in turn: text pieces and media parts."""
    return [content] if isinstance(content, str) else [p["text"] if p["type"] == "text" else p for p in content]


def chat_stop_token_ids(tokenizer: Tokenizer, template: Template = "tokens") -> list[int]:
    """The token ids that end an assistant turn: <|end|> ("tokens"), EOS ("plain"; none without EOS: stop at "\\n")."""
    if template == "tokens":
        return [_chat_token_ids(tokenizer)[END_OF_TURN]]
    return [tokenizer.eos_id] if tokenizer.eos_id is not None else []


def jinja_chat_template(tokenizer: Tokenizer, template: Template = "tokens") -> str:
    """The same template as a Jinja2 string (Hugging Face's and vLLM's `chat_template` format).

    Rendered with `messages` and `add_generation_prompt`, then encoded with special tokens recognised,
    it gives the ids `render_chat` gives (tested), so clients that apply the template themselves
    (lm-evaluation-harness, transformers' `apply_chat_template`) see what training saw.
    """
    bos = tokenizer.id_to_token(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    if template == "tokens":
        _chat_token_ids(tokenizer)  # the tokenizer must have them
        turn = "<|{{ message['role'] }}|>{{ message['content'] }}" + END_OF_TURN
        generation = ROLE_TOKENS["assistant"]
    else:
        eos = tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
        names = "{'system': 'System', 'user': 'User', 'assistant': 'Assistant'}"
        turn = ("{{ " + names + "[message['role']] }}: {{ message['content'] }}"
                "{% if message['role'] == 'assistant' %}" + eos + "{% endif %}\n")
        generation = "Assistant:"
    return (bos + "{% for message in messages %}" + turn + "{% endfor %}"
            "{% if add_generation_prompt %}" + generation + "{% endif %}")
