"""Chat data for supervised fine-tuning: read conversations from JSONL or the bundled sets; rendering them is
`gptkit.chat_format`'s.

    from gptkit.data.chat import bundled_chat, read_chat_jsonl, render_chat
    conversations = read_chat_jsonl("sft.jsonl")         # [[{"role": "user", "content": "Hi"}, ...], ...]
    conversations = bundled_chat("jargon")               # or "chatterbot"
    ids, assistant_mask = render_chat(conversations[0], tokenizer)
    prompt = render_chat([{"role": "user", "content": "Hi"}], tokenizer, add_generation_prompt=True).ids
    # generate from `prompt` (token ids) with stop_token_ids=chat_stop_token_ids(tokenizer)

A conversation is a list of messages `{"role": "system"|"user"|"assistant", "content": str}` (the
OpenAI format). A system message may only come first.

Input JSONL, one conversation per line, in either form (field names are arguments):
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    {"prompt": "Hi", "response": "Hello!"}              # optionally "system": "..."

The chat format itself (templates, role tokens, stop tokens, the loss mask) is `gptkit.chat_format`.
"""

from __future__ import annotations

import random
from pathlib import Path

from gptkit.data.labelled import bundled_labelled, jsonl_rows, read_utf8
from gptkit.errors import GptkitError, require
from gptkit.chat_format import ROLES, Conversation, validate_conversation

# Ways to ask for a Jargon File definition; one is picked per entry (seeded), so the model sees variety.
JARGON_QUESTIONS = (
    "What does '{term}' mean?",
    "Define {term}.",
    'What is "{term}" in hacker slang?',
    "Explain the jargon term '{term}'.",
)


# ------------------------------------------------------------------------------------------------
# reading


def read_chat_jsonl(path: str | Path, *, messages_field: str = "messages", prompt_field: str = "prompt",
                    response_field: str = "response", system_field: str = "system") -> list[Conversation]:
    """Conversations from JSONL: a `messages` list per line, or `prompt`/`response` (and optional `system`)."""
    path = Path(path)
    require(path.is_file(), f"no chat data file at {path}")
    conversations = []
    for row in jsonl_rows(path, read_utf8(path)):
        where = f"{path} line {row.line}"
        values = row.values
        if messages_field in values:
            messages = values[messages_field]
        elif prompt_field in values and response_field in values:
            messages = [{"role": "user", "content": values[prompt_field]},
                        {"role": "assistant", "content": values[response_field]}]
            if values.get(system_field) is not None:
                messages.insert(0, {"role": "system", "content": values[system_field]})
        else:
            raise GptkitError(f"{where}: expected a {messages_field!r} list or {prompt_field!r} and "
                              f"{response_field!r} fields; found {', '.join(map(repr, values)) or 'no fields'}")
        conversations.append(validate_conversation(messages, where))
    require(conversations, f"{path} has no conversations")
    return conversations


def chatterbot_conversations(path: str | Path | None = None) -> list[Conversation]:
    """The ChatterBot corpus (default: the bundled English one) as conversations.

    Turns alternate user / assistant starting with the user; an unanswered last user turn is dropped,
    and a conversation left without an answer is skipped.
    """
    path = Path(path) if path is not None else bundled_labelled("chatterbot")
    conversations = []
    for row in jsonl_rows(path, read_utf8(path)):
        where = f"{path} line {row.line}"
        turns = row.values.get("turns")
        require(isinstance(turns, list) and all(isinstance(t, str) for t in turns),
                f"{where}: expected 'turns', a list of strings")
        turns = turns[:len(turns) // 2 * 2]  # drop an unanswered last user turn
        if turns:
            messages = [{"role": ROLES[1 + i % 2], "content": t} for i, t in enumerate(turns)]
            conversations.append(validate_conversation(messages, where))
    require(conversations, f"{path} has no conversations")
    return conversations


def jargon_conversations(path: str | Path | None = None, *, seed: int = 0) -> list[Conversation]:
    """The Jargon File entries (default: the bundled subset) as question -> definition pairs.

    Each question is one of `JARGON_QUESTIONS`, chosen with `seed`; the answer is the definition.
    """
    path = Path(path) if path is not None else bundled_labelled("jargon")
    rng = random.Random(seed)
    conversations = []
    for row in jsonl_rows(path, read_utf8(path)):
        where = f"{path} line {row.line}"
        term, definition = row.values.get("term"), row.values.get("definition")
        require(isinstance(term, str) and isinstance(definition, str),
                f"{where}: expected string fields 'term' and 'definition'")
        question = rng.choice(JARGON_QUESTIONS).format(term=term)
        conversations.append(validate_conversation([{"role": "user", "content": question},
                                                    {"role": "assistant", "content": definition}], where))
    require(conversations, f"{path} has no entries")
    return conversations


def bundled_chat(name: str, *, seed: int = 0) -> list[Conversation]:
    """A bundled chat data set as conversations: "chatterbot" or "jargon"."""
    readers = {"chatterbot": chatterbot_conversations, "jargon": lambda: jargon_conversations(seed=seed)}
    require(name in readers, f"no bundled chat data set named {name!r}; available: {', '.join(readers)}")
    return readers[name]()


# ------------------------------------------------------------------------------------------------
