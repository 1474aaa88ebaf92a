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
from pathlib import Path

import numpy as np

from gptkit.data.images import bundled_mnist, read_image, stratified_indices
from gptkit.data.labelled import jsonl_rows, read_utf8
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
    """(N, C, H, W) float32 pixels in [0, 1]; video clips: (N, frames, C, H, W)."""
    prompts: list[list[int]]
    answers: list[list[int]]

    def __post_init__(self) -> None:
        n = len(self.images)
        require(self.images.ndim in (4, 5), f"images must be (N, C, H, W), or clips (N, frames, C, H, W); got shape "
                                            f"{self.images.shape}")
        require(len(self.prompts) == n and len(self.answers) == n,
                f"{n} images, {len(self.prompts)} prompts and {len(self.answers)} answers: one of each per example")
        require(all(len(a) > 0 for a in self.answers), "every example needs a non-empty answer")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: Sequence[int]) -> "MediaExamples":
        rows = list(rows)
        return MediaExamples(self.images[rows], [self.prompts[i] for i in rows], [self.answers[i] for i in rows])


def read_image_jsonl(path: Path, tokenizer: Tokenizer, media_tokens: int, *, size: int, channels: int,
                     image_field: str = "image", prompt_field: str = "prompt",
                     answer_field: str = "answer") -> MediaExamples:
    """Examples from JSONL rows {"image": path (relative to the file), "prompt": text, "answer": text}.

    A prompt without an `<image>` placeholder gets one in front. Errors name the file and line.
    """
    path = Path(path)
    images, prompts, answers = [], [], []
    for row in jsonl_rows(path, read_utf8(path)):
        where = f"{path} line {row.line}"
        missing = [f for f in (image_field, answer_field) if not isinstance(row.values.get(f), str)]
        require(not missing, f"{where}: needs string field(s) {missing}")
        prompt = row.values.get(prompt_field, "")
        require(isinstance(prompt, str), f"{where}: {prompt_field!r} must be a string")
        if IMAGE_PLACEHOLDER not in prompt:
            prompt = IMAGE_PLACEHOLDER + prompt
        images.append(read_image(path.parent / row.values[image_field], size=size, channels=channels))
        prompts.append(media_prompt(tokenizer, prompt, media_tokens))
        answers.append(tokenizer.encode(row.values[answer_field]))
    require(images, f"{path} has no examples")
    return MediaExamples(np.stack(images), prompts, answers)


def mnist_examples(tokenizer: Tokenizer, media_tokens: int) -> tuple[MediaExamples, np.ndarray]:
    """The bundled MNIST digits as "<image>digit:" -> " 7" examples, and their labels (for stratified splits)."""
    images, labels = bundled_mnist()
    prompt = media_prompt(tokenizer, "<image>digit:", media_tokens)
    return (MediaExamples(images[:, None].astype(np.float32) / 255.0, [prompt] * len(labels),
                          [tokenizer.encode(f" {label}") for label in labels]), labels)


def multimodal_splits(data: str, tokenizer: Tokenizer, media_tokens: int, *, size: int, channels: int,
                      val_fraction: float, test_fraction: float,
                      seed: int) -> tuple[MediaExamples, MediaExamples, MediaExamples]:
    """Train/val/test examples of `data`: "mnist" (bundled; split stratified by digit) or an image JSONL file."""
    if data == "mnist":
        require((size, channels) == (28, 1), f"the bundled MNIST digits are 28x28 grey: use --image-size 28 "
                                             f"--image-channels 1 (got {size}, {channels})")
        examples, labels = mnist_examples(tokenizer, media_tokens)
    else:
        require(Path(data).is_file(), f"--data {data} is neither 'mnist' nor an image JSONL file")
        examples = read_image_jsonl(Path(data), tokenizer, media_tokens, size=size, channels=channels)
        labels = np.zeros(len(examples), dtype=np.int64)
    train_rows, val_rows, test_rows = stratified_indices(labels, (1 - val_fraction - test_fraction, val_fraction,
                                                                  test_fraction), seed=seed)
    for name, rows in (("validation", val_rows), ("test", test_rows)):
        require(len(rows) > 0, f"{data}: the {name} split is empty; add examples or raise its fraction")
    return examples.subset(train_rows), examples.subset(val_rows), examples.subset(test_rows)
