"""A prepared token dataset: memory-mapped train/val ids, random training batches, exact evaluation windows.

Reads what `gptkit prepare` writes: `train.bin`, `val.bin` (flat uint16/uint32 token ids),
`tokenizer.json` and `meta.json`. The .bin files are memory-mapped, so a dataset of any size
opens instantly and only the windows a batch touches are read from disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gptkit.errors import GptkitError, require
from gptkit.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

FORMAT = "gptkit-tokens"
FORMAT_VERSION = 1
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")


class TokenDataset:
    """A directory written by `gptkit prepare`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = self._read_meta()
        self.dtype = np.dtype(self.meta["dtype"])
        self._arrays: dict[str, np.ndarray] = {}

    def _read_meta(self) -> dict[str, Any]:
        hint = f"run `gptkit prepare --input FILE_OR_DIR --out {self.path}` first"
        require(self.path.exists(), f"dataset {self.path} does not exist: {hint}")
        meta_file = self.path / META_FILE
        require(meta_file.is_file(), f"{self.path} is not a prepared dataset (it has no {META_FILE}): {hint}")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as e:
            raise GptkitError(f"{meta_file} is not valid JSON ({e}); prepare the dataset again") from None
        require(isinstance(meta, dict) and meta.get("format") == FORMAT,
                f"{meta_file} does not describe a gptkit token dataset: {hint}")
        require(meta.get("format_version", 0) <= FORMAT_VERSION,
                f"{self.path} was prepared by a newer gptkit (format version {meta.get('format_version')}); "
                "upgrade gptkit or prepare it again")
        return meta

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {self.n_tokens(s):,} tokens" for s in SPLITS)
        return f"TokenDataset({str(self.path)!r}: vocab {self.vocab_size}, {counts})"

    # Memory maps do not pickle as maps (they would be copied whole), so a DataLoader worker that
    # receives this object re-opens them instead.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    # --- what is in it ---------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_file(self.path / TOKENIZER_FILE)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def _split_meta(self, split: str) -> dict[str, int]:
        require(split in self.meta["splits"],
                f"{self.path} has no split {split!r}; it has {', '.join(self.meta['splits'])}")
        return self.meta["splits"][split]

    def n_tokens(self, split: str) -> int:
        return int(self._split_meta(split)["n_tokens"])

    def n_bytes(self, split: str) -> int:
        """UTF-8 bytes of the text behind the split's tokens (for bits per byte)."""
        return int(self._split_meta(split)["n_bytes"])

    def split(self, name: str) -> np.ndarray:
        """The split's token ids as a read-only memory map."""
        if name not in self._arrays:
            n = self.n_tokens(name)
            file = self.path / f"{name}.bin"
            require(file.is_file(), f"{file} is missing: prepare the dataset again")
            require(file.stat().st_size == n * self.dtype.itemsize,
                    f"{file} holds {file.stat().st_size} bytes but meta.json promises {n} {self.dtype.name} tokens; "
                    "it was truncated or modified: prepare the dataset again")
            # Keeping the map open is fine: its pages are file-backed, so the OS can drop them at will
            # (they show up in RSS but are not a leak). np.memmap cannot map an empty file.
            self._arrays[name] = np.memmap(file, dtype=self.dtype, mode="r") if n else np.zeros(0, self.dtype)
        return self._arrays[name]

    # --- training batches --------------------------------------------------------------------------
    def batch(self, split: str, batch_size: int, block_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` random windows: x of shape (B, T) and y = x shifted by one token, both int64.

        The offsets come only from `generator`, so a batch is a pure function of its state: saving
        the generator state (or re-seeding it per step) makes resumed training see the same data.
        """
        import torch  # here, not at the top: `gptkit prepare`'s worker processes import this module without torch

        data = self.split(split)
        require(len(data) >= block_size + 1,
                f"the {split} split of {self.path} has {len(data)} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}: use a smaller block size or more data")
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
        windows = torch.from_numpy(data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    # --- exact evaluation ---------------------------------------------------------------------------
    def iter_eval_windows(self, split: str, block_size: int,
                          batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive, non-overlapping windows that predict every token but the first exactly once.

        Full windows come in batches of up to `batch_size`; the leftover (shorter) window, if any,
        comes last as a batch of one. Sum per-token losses (or weight each batch by y.numel()) to
        get the exact mean over the split.
        """
        import torch

        data = self.split(split)
        n_targets = len(data) - 1
        require(n_targets >= 1, f"the {split} split of {self.path} has {len(data)} tokens: nothing to evaluate")
        n_full = n_targets // block_size
        for first in range(0, n_full, batch_size):
            rows = np.arange(first, min(first + batch_size, n_full))
            windows = torch.from_numpy(data[rows[:, None] * block_size + np.arange(block_size + 1)].astype(np.int64))
            yield windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        start = n_full * block_size
        if start < n_targets:
            window = torch.from_numpy(data[start:].astype(np.int64))[None]
            yield window[:, :-1].contiguous(), window[:, 1:].contiguous()
