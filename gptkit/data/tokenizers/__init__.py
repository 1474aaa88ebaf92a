"""Tokenizers that ship inside the package, so that they work offline (see PROVENANCE.md here).

`gptkit prepare --tokenizer gpt2` uses GPT-2's own byte-level BPE; gptkit never downloads one.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from gptkit.errors import require
from gptkit.tokenizer import EOS, SpecialTokens, Tokenizer

HERE = Path(__file__).resolve().parent

# name -> (file in this directory, its special tokens). GPT-2 has no padding token.
TOKENIZER_PRESETS: dict[str, tuple[str, SpecialTokens]] = {
    "gpt2": ("gpt2.json.gz", SpecialTokens(bos=EOS, eos=EOS, pad=None)),
}


def load_tokenizer_preset(name: str) -> Tokenizer:
    """A bundled tokenizer by name (one of `TOKENIZER_PRESETS`)."""
    require(name in TOKENIZER_PRESETS,
            f"unknown tokenizer preset {name!r}; bundled: {', '.join(TOKENIZER_PRESETS)}")
    filename, special = TOKENIZER_PRESETS[name]
    # Stored compressed: 3.6 MB of JSON is 0.6 MB gzipped, and decompressing takes milliseconds.
    text = gzip.decompress((HERE / filename).read_bytes()).decode("utf-8")
    return Tokenizer(HFTokenizer.from_str(text), special)
