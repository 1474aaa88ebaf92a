"""Multimodal examples: a prompt with placeholders for media, the media as pixel arrays, and the answer to learn.

    prompt = media_prompt(tokenizer, "<image> digit:", media_tokens=16)   # ids, MEDIA_SLOT x 16 at <image>
    examples = MediaExamples(images, [prompt] * n, [tokenizer.encode(" 7")] * n)

A placeholder (`<image>`) in the text becomes `media_tokens` slots (MEDIA_SLOT, -1) in the ids: early
fusion puts the image's projected tokens there; with media_tokens=0 (cross-attention fusion) the
placeholder is dropped and the text alone is the prompt. Knows nothing of models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gptkit.errors import require
from gptkit.tokenizer import Tokenizer

MEDIA_SLOT = -1
IMAGE_PLACEHOLDER = "<image>"


def media_prompt(tokenizer: Tokenizer, text: str, media_tokens: int, *, placeholder: str = IMAGE_PLACEHOLDER,
                 images: int = 1, add_bos: bool = True) -> list[int]:
    """Token ids of `text` with `media_tokens` MEDIA_SLOTs for each `placeholder` (one per image given)."""
    pieces = text.split(placeholder)
    found = len(pieces) - 1
    require(found == images, f"the prompt has {found} {placeholder} placeholder(s) but {images} image(s) were "
                             "given: put one placeholder where each image goes")
    ids = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    for i, piece in enumerate(pieces):
        if i:
            ids += [MEDIA_SLOT] * media_tokens
        if piece:
            ids += tokenizer.encode(piece)
    return ids


@dataclass
class MediaExamples:
    """Examples for a multimodal task: one image per example (images[i] goes with prompts[i])."""

    images: np.ndarray
    """(N, C, H, W) float32 pixels in [0, 1]."""
    prompts: list[list[int]]
    answers: list[list[int]]

    def __post_init__(self) -> None:
        n = len(self.images)
        require(self.images.ndim == 4, f"images must be (N, C, H, W), got shape {self.images.shape}")
        require(len(self.prompts) == n and len(self.answers) == n,
                f"{n} images, {len(self.prompts)} prompts and {len(self.answers)} answers: one of each per example")
        require(all(len(a) > 0 for a in self.answers), "every example needs a non-empty answer")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: Sequence[int]) -> "MediaExamples":
        rows = list(rows)
        return MediaExamples(self.images[rows], [self.prompts[i] for i in rows], [self.answers[i] for i in rows])
