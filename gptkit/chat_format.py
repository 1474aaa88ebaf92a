"""The chat format, one place for all users of chat: conversations, templates, role tokens, stop tokens.

Training (`gptkit.data.chat`, SFT), inference (`LLM.chat`), the server (`/v1/chat/completions`, the
Jinja template it publishes), the terminal client and the Hugging Face export all render through this
module. Knows nothing of models, files or HTTP.

A conversation is a list of messages `{"role": "system"|"user"|"assistant", "content": str}` (the
OpenAI format). A system message may only come first.

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

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from gptkit.errors import GptkitError, require
from gptkit.tokenizer import CHAT_TOKENS, SPECIAL_TOKENS, Tokenizer

Message = dict[str, str]
Conversation = list[Message]
Template = Literal["tokens", "plain"]
ChatTemplate = Literal["auto", "tokens", "plain"]

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = dict(zip(ROLES, CHAT_TOKENS[:3]))  # role -> its marker token
END_OF_TURN = CHAT_TOKENS[3]
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


class RenderedChat(NamedTuple):
    """Token ids of a rendered conversation and, per token, whether it is a training target."""

    ids: list[int]
    assistant_mask: list[bool]


def validate_conversation(messages: Any, where: str = "conversation", *,
                          require_assistant: bool = True) -> Conversation:
    """`messages` checked to be a conversation; errors start with `where` (e.g. "data.jsonl line 3")."""
    require(isinstance(messages, list), f"{where}: messages must be a list, found {type(messages).__name__}")
    require(len(messages) > 0, f"{where}: empty messages list")
    for i, message in enumerate(messages, start=1):
        require(isinstance(message, dict), f"{where}: message {i} must be an object with 'role' and 'content'")
        role = message.get("role")
        require(role in ROLES, f"{where}: message {i} has unknown role {role!r}; roles are {', '.join(ROLES)}")
        require(role != "system" or i == 1, f"{where}: message {i} is a system message; it may only come first")
        content = message.get("content")
        require(content is not None, f"{where}: message {i} ({role}) has no content")
        require(isinstance(content, str), f"{where}: message {i} ({role}) content must be a string")
        require(content.strip() != "", f"{where}: message {i} ({role}) has empty content")
    require(not require_assistant or any(m["role"] == "assistant" for m in messages),
            f"{where}: the conversation has no assistant turn, so there is nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


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
                template: Template = "tokens") -> RenderedChat:
    """(ids, assistant_mask) of a conversation; see the module docstring for the templates and the mask.

    With `add_generation_prompt` the ids end with the assistant's marker, ready for generation, and the
    conversation need not hold an assistant turn.
    """
    require(template in ("tokens", "plain"), f"unknown chat template {template!r}; use 'tokens' or 'plain'")
    conversation = validate_conversation(list(messages), require_assistant=not add_generation_prompt)
    reserved = _reserved_strings(tokenizer)
    for i, message in enumerate(conversation, start=1):
        found = [t for t in reserved if t in message["content"]]
        if found:
            raise GptkitError(f"message {i} ({message['role']}) contains the reserved token text {found[0]!r}; "
                              "remove it (the tokenizer would read it as a control token)")
    ids: list[int] = []
    mask: list[bool] = []

    def add(piece: list[int], trained: bool) -> None:
        ids.extend(piece)
        mask.extend([trained] * len(piece))

    if tokenizer.bos_id is not None:
        add([tokenizer.bos_id], False)
    if template == "tokens":
        special = _chat_token_ids(tokenizer)
        for message in conversation:
            trained = message["role"] == "assistant"
            add([special[ROLE_TOKENS[message["role"]]]], False)
            add(tokenizer.encode(message["content"]), trained)
            add([special[END_OF_TURN]], trained)
        if add_generation_prompt:
            add([special[ROLE_TOKENS["assistant"]]], False)
    else:
        newline = tokenizer.encode("\n")
        for message in conversation:
            trained = message["role"] == "assistant"
            add(tokenizer.encode(f"{PLAIN_NAMES[message['role']]}:"), False)
            add(tokenizer.encode(" " + message["content"]), trained)
            if trained and tokenizer.eos_id is not None:
                add([tokenizer.eos_id], True)
                add(newline, False)
            else:
                add(newline, trained)
        if add_generation_prompt:
            add(tokenizer.encode(f"{PLAIN_NAMES['assistant']}:"), False)
    return RenderedChat(ids, mask)


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
