"""Request and response bodies of `gptkit serve`, mirroring OpenAI's API (and vLLM's extras).

Requests ignore fields they do not know (`extra="ignore"`), as OpenAI-compatible servers do, so a
client written for a newer API still works. Non-finite numbers (JSON's NaN and Infinity, which
Python's json module accepts) are rejected. Which values are valid beyond their types (ranges,
context length) is checked by the server, which answers 400 with an OpenAI-shaped error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "content_filter"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ------------------------------------------------------------------------------------------

class StreamOptions(_Request):
    include_usage: bool = False
    """Send a last chunk with the request's token usage and no choices."""


class _SamplingRequest(_Request):
    model: str | None = None
    """The served model's name (GET /v1/models); omitted means the served model."""
    n: int = 1
    """Completions per prompt (at most the server's batch size)."""
    temperature: float | None = None
    """Default 1; 0 is greedy."""
    top_p: float | None = None
    top_k: int | None = None
    """vLLM extra; None, 0 or -1 mean no limit."""
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    """vLLM extra: > 1 discourages tokens already in the prompt or output."""
    stop_token_ids: list[int] | None = None
    """vLLM extra: token ids that end generation (in addition to the default ones)."""
    ignore_eos: bool = False
    """vLLM extra: keep generating past the end-of-text token."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    conditions: dict[str, Any] | list[Any] | None = None
    """gptkit extra: role, tone, style, audience, language, length, format and if/then rules
    (`gptkit.prompting.conditions`), rendered before each text prompt (completions) or at the top of
    the system message (chat)."""


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    max_tokens: int | None = None
    """Default 16 (OpenAI's); 0 is allowed with echo (score the prompt only)."""
    logprobs: int | None = Field(default=None)
    """Return the log-probability of each token and this many most likely alternatives (0..20)."""
    echo: bool = False
    """Prepend the prompt to the text (and, with logprobs, return the prompt tokens' logprobs too)."""
    suffix: str | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None


class ContentPart(_Request):
    """A content part: {"type": "text", "text"}, and for a multimodal checkpoint {"type": "image_url", "image_url":
    {"url": "data:image/png;base64,..."}} or {"type": "input_audio", "input_audio": {"data": BASE64, "format":
    "wav"}}; the media fields are checked by `gptkit.chat_format.content_parts`, whose errors name the part."""

    type: str
    text: str | None = None
    image_url: dict[str, Any] | str | None = None
    """{"url": a data URL, "detail": ignored}: only data URLs (the server fetches nothing)."""
    input_audio: dict[str, Any] | None = None
    """{"data": the base64 of a wav, mp3, ogg or flac file, "format": its format}."""


class ChatMessageIn(_Request):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessageIn]
    max_tokens: int | None = None
    """Deprecated by OpenAI in favour of max_completion_tokens; default: the rest of the context."""
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = None
    """Instead of prompt: a conversation, rendered with the chat template."""
    add_special_tokens: bool = True
    """Passed to the tokenizer: gptkit's own tokenizers add no special tokens either way."""
    add_generation_prompt: bool = True
    """With messages: end with the assistant's marker, as /v1/chat/completions does."""
    return_token_strs: bool = False
    """Also return each token's text (`tokenizer.decode([id])`)."""


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class ModerationRequest(_Request):
    input: str | list[str]
    """A text, or a list of texts (one result each)."""
    model: str | None = None
    """Ignored: the server has one moderator (its name comes back in the response)."""


class EmbeddingRequest(_Request):
    input: str | list[str] | list[int] | list[list[int]]
    """A text, a list of texts, a list of token ids, or a list of such lists (one embedding each)."""
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    """float: a list of numbers; base64: the little-endian float32 bytes, base64-encoded (OpenAI's client default)."""
    dimensions: int | None = Field(default=None, ge=1)
    """Keep the first D components, then normalise."""
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)
    """vLLM's extra: keep each input's first N tokens (at most the context) instead of refusing a longer input."""
    user: str | None = None


# --- responses -----------------------------------------------------------------------------------------

class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(_Response):
    """OpenAI's legacy completions format: one entry per token (the first prompt token has no logprob)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(_Response):
    content: list[TokenLogprobOut] | None = None


class ChatMessageOut(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int
    message: ChatMessageOut
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaMessage(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatStreamChoice(_Response):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Usage | None = None


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gptkit"
    root: str | None = None
    max_model_len: int


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(_Response):
    tokens: list[int]
    count: int
    max_model_len: int
    token_strs: list[str] | None = None


class DetokenizeResponse(_Response):
    prompt: str


class TokenizerInfo(_Response):
    tokenizer_class: str
    kind: str
    """gptkit's kind of tokenizer: "char" or "bpe"."""
    vocab_size: int
    """Tokens the tokenizer knows (the model may have more embeddings: model_vocab_size)."""
    model_vocab_size: int
    bos_token: str | None
    bos_token_id: int | None
    eos_token: str | None
    eos_token_id: int | None
    pad_token: str | None
    pad_token_id: int | None
    chat_template: str | None
    """The server's chat template as a Jinja template in Hugging Face's style (None: chat unavailable)."""
    chat_template_name: str | None
    """gptkit's name for it: "tokens" (role tokens) or "plain" (text); see gptkit.data.chat."""
    model_max_length: int
    max_model_len: int


class ModerationMatch(_Response):
    word: str
    """The word-list entry."""
    text: str
    """What the input said (e.g. "f.u.c.k")."""
    start: int
    end: int
    category: str


class ModerationResultOut(_Response):
    flagged: bool
    categories: dict[str, bool]
    """Only the categories the moderator can judge (its word list's and those its classifier was trained on)."""
    category_scores: dict[str, float]
    matches: list[ModerationMatch] = []
    """gptkit extra: the word-list entries found in the input."""


class ModerationResponse(_Response):
    id: str
    model: str
    results: list[ModerationResultOut]


class EmbeddingOut(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingUsage


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorDetail


class Health(_Response):
    status: str
    details: dict[str, Any] | None = None
