"""Tokenizers: byte-level BPE or characters, both as Hugging Face `tokenizers` objects; knows nothing of models.

Both kinds round-trip any UTF-8 text: byte-level BPE by construction, the character tokenizer
through byte fallback (a character it never saw becomes its UTF-8 bytes, `<0xNN>` tokens).
Either is saved as a standard `tokenizer.json` that `transformers` can read.

Which tokens mark the beginning and end of a text and padding (`SpecialTokens`) is saved beside it
in `tokenizer_config.json`, in Hugging Face's format (`bos_token`, `eos_token`, `pad_token`): gptkit's
own tokenizers use `<|endoftext|>` for both ends, as GPT-2 does, but imported ones have their own
(Llama's `<s>`/`</s>`, SmolLM2's `<|im_end|>`, ...). Without that file the defaults apply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gptkit.errors import GptkitError, require

EOS = "<|endoftext|>"  # also the BOS and document separator, as in GPT-2
PAD = "<|pad|>"
# Reserved for chat templates: role markers and an end-of-turn token.
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [EOS, PAD, *CHAT_TOKENS]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
ROLES_FILE = "tokenizer_config.json"
_ROLE_KEYS = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token"}


@dataclass(frozen=True)
class SpecialTokens:
    """The tokens that begin a text, end it (and separate documents), and pad a batch; None: there is none."""

    bos: str | None = EOS
    eos: str | None = EOS
    pad: str | None = PAD

    @classmethod
    def from_hf_config(cls, data: dict[str, Any]) -> "SpecialTokens":
        """Hugging Face's keys (`bos_token`, ...: a string or an AddedToken dict); absent keys keep the defaults."""
        found = {}
        for role, key in _ROLE_KEYS.items():
            if key in data:
                value = data[key]
                found[role] = value.get("content") if isinstance(value, dict) else value
        return cls(**found)

    def to_hf_config(self) -> dict[str, str | None]:
        return {key: getattr(self, role) for role, key in _ROLE_KEYS.items()}


class Tokenizer:
    """A thin, typed face over a Hugging Face `tokenizers.Tokenizer`."""

    def __init__(self, hf: HFTokenizer, special: SpecialTokens | None = None) -> None:
        self.hf = hf
        special = special or SpecialTokens()
        # A role whose token is not in the vocabulary has no token (e.g. no <|pad|> in GPT-2's vocabulary).
        present = {role: tok if tok is not None and hf.token_to_id(tok) is not None else None
                   for role, tok in vars(special).items()}
        self.special = SpecialTokens(**present)
        self.bos_id = self._id(self.special.bos)
        self.eos_id = self._id(self.special.eos)
        self.pad_id = self._id(self.special.pad)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.hf.token_to_id(token)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Byte-level BPE trained on `texts` (GPT-2's pre-tokenisation and byte alphabet)."""
        minimum = 256 + len(SPECIAL_TOKENS) + 1
        require(vocab_size >= minimum,
                f"--vocab-size {vocab_size} is too small for byte-level BPE: it needs at least {minimum} "
                f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens + 1 merge)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def train_char(cls, texts: Iterable[str]) -> "Tokenizer":
        """One token per character seen in `texts`, plus byte-fallback tokens for everything else."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        require(chars, "cannot build a character tokenizer from empty text")
        vocab = {c: i for i, c in enumerate(sorted(chars))}
        for token in BYTE_TOKENS:
            vocab.setdefault(token, len(vocab))
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        hf.add_special_tokens(SPECIAL_TOKENS)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        require(path.is_file(), f"no tokenizer at {path}: expected a tokenizer.json file or a directory holding one")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise GptkitError(f"{path} is not a valid tokenizer.json: {e}") from None
        return cls(hf, read_special_tokens(path.parent))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "tokenizer.json"
        self.hf.save(str(path))
        (path.parent / ROLES_FILE).write_text(json.dumps(self.special.to_hf_config(), indent=2) + "\n")
        return path

    # --- use ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once; the Rust side spreads the work over all cores."""
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.hf.id_to_token(index)

    def describe(self) -> dict:
        model = json.loads(self.hf.to_str())["model"]
        kind = "char" if model.get("type") == "BPE" and not model.get("merges") else "bpe"
        return {"kind": kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "pad_id": self.pad_id,
                "bos_id": self.bos_id}


def read_special_tokens(directory: Path) -> SpecialTokens:
    """The roles in `directory/tokenizer_config.json` (gptkit's or Hugging Face's), else the defaults."""
    path = Path(directory) / ROLES_FILE
    if not path.is_file():
        return SpecialTokens()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GptkitError(f"{path} is not valid JSON: {e}") from None
    require(isinstance(data, dict), f"{path} must hold a JSON object")
    return SpecialTokens.from_hf_config(data)


class StreamDecoder:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8 characters.

    A byte-level token can end halfway through a multi-byte character; decoding it alone gives
    U+FFFD. As vLLM does, we decode a short window (the previous piece plus the new tokens) and
    emit the difference, so each step costs O(1) and decoders that treat a leading space
    specially still see context.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the context window
        self.read_offset = 0  # tokens before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return ""  # nothing complete yet: wait for the rest of the character
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix):]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):]


def iter_text_chunks(text: str, chunk_chars: int = 1 << 16) -> Iterator[str]:
    """Split text into pieces of about `chunk_chars` at newline boundaries (for streaming encoders)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):
            newline = text.rfind("\n", start, end)
            if newline > start:
                end = newline + 1
        yield text[start:end]
        start = end
