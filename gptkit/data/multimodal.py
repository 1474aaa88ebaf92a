"""Multimodal examples: a prompt with placeholders for media, the media as arrays, and the answer to learn.

    prompt = media_prompt(tokenizer, "<image> digit:", media_tokens=16)   # ids, MEDIA_SLOT x 16 at <image>
    examples = MediaExamples(images, [prompt] * n, [tokenizer.encode(" 7")] * n)

A placeholder (`<image>`, `<video>` or `<audio>`) in the text becomes `media_tokens` slots (MEDIA_SLOT, -1)
in the ids: early fusion puts the media's projected tokens there; with media_tokens=0 (cross-attention
fusion) the placeholder is dropped and the text alone is the prompt. Media arrays are what the model takes:
pixels (N, C, H, W) in [0, 1], clips (N, frames, C, H, W), or 16 kHz audio (N, samples) of one length
(`fit_clip`). Knows nothing of models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from gptkit.data.audio import read_audio
from gptkit.data.images import bundled_mnist, read_image, stratified_indices
from gptkit.data.labelled import jsonl_rows, read_utf8
from gptkit.data.video import DIRECTIONS, moving_digits, read_video
from gptkit.errors import require
from gptkit.tokenizer import Tokenizer

MEDIA_SLOT = -1
Modality = Literal["image", "video", "audio"]
PLACEHOLDERS: dict[str, str] = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
IMAGE_PLACEHOLDER = PLACEHOLDERS["image"]
BUNDLED_MODALITY = {"mnist": "image", "moving-mnist": "video"}


@dataclass(frozen=True)
class MediaShape:
    """What one media item must look like for a model: the reader's parameters, from its config."""

    modality: Modality = "image"
    image_size: int = 28
    channels: int = 1
    frames: int = 1
    clip_samples: int = 32000

    @property
    def placeholder(self) -> str:
        return PLACEHOLDERS[self.modality]


def fit_clip(samples: np.ndarray, length: int) -> np.ndarray:
    """Audio samples cut to `length`, or padded with silence at the end (as Whisper pads to 30 s)."""
    samples = np.asarray(samples, dtype=np.float32)
    require(samples.ndim == 1, f"audio must be mono samples (samples,), got shape {samples.shape}")
    out = np.zeros(length, dtype=np.float32)
    out[: min(length, len(samples))] = samples[:length]
    return out


def read_media(path: str | Path, shape: MediaShape) -> np.ndarray:
    """One media file as the model takes it (an image, a clip of frames, or an audio clip of fixed length)."""
    if shape.modality == "image":
        return read_image(path, size=shape.image_size, channels=shape.channels)
    if shape.modality == "video":
        return read_video(path, frames=shape.frames, size=shape.image_size, channels=shape.channels)
    return fit_clip(read_audio(path), shape.clip_samples)


def load_media(item: str | Path | np.ndarray, shape: MediaShape) -> np.ndarray:
    """A media item given as a file, or as an array checked as it is: pixels (C, H, W) in [0, 1], a clip
    (frames, C, H, W), or 16 kHz mono samples (samples,) in [-1, 1] (fitted to the clip length)."""
    if isinstance(item, (str, Path)):
        return read_media(item, shape)
    array = np.asarray(item, dtype=np.float32)
    if shape.modality == "audio":
        require(array.ndim == 1, f"an audio array must be 16 kHz mono samples (samples,), got shape {array.shape}")
        require(bool(np.isfinite(array).all()), "an audio array holds non-finite samples (NaN or infinity)")
        return fit_clip(array, shape.clip_samples)
    want = (shape.channels, shape.image_size, shape.image_size)
    if shape.modality == "video":
        want = (shape.frames, *want)
    require(array.shape == want, f"a {shape.modality} array must be {want} with values in [0, 1], "
                                 f"got shape {array.shape}")
    return array


def media_prompt(tokenizer: Tokenizer, text: str, media_tokens: int, *, placeholder: str = IMAGE_PLACEHOLDER,
                 images: int = 1, add_bos: bool = True) -> list[int]:
    """Token ids of `text` with `media_tokens` MEDIA_SLOTs for each `placeholder` (one per media item given)."""
    pieces = text.split(placeholder)
    found = len(pieces) - 1
    require(found == images, f"the prompt has {found} {placeholder} placeholder(s) but {images} media item(s) "
                             f"were given: put one {placeholder} where each goes")
    ids = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    for i, piece in enumerate(pieces):
        if i:
            ids += [MEDIA_SLOT] * media_tokens
        if piece:
            ids += tokenizer.encode(piece)
    return ids


@dataclass
class MediaExamples:
    """Examples for a multimodal task: one media item per example (media[i] goes with prompts[i])."""

    media: np.ndarray
    """(N, C, H, W) float32 pixels in [0, 1]; video clips: (N, frames, C, H, W); audio: (N, samples) at 16 kHz."""
    prompts: list[list[int]]
    answers: list[list[int]]

    def __post_init__(self) -> None:
        n = len(self.media)
        require(self.media.ndim in (2, 4, 5), f"media must be images (N, C, H, W), clips (N, frames, C, H, W) or "
                                              f"audio (N, samples); got shape {self.media.shape}")
        require(len(self.prompts) == n and len(self.answers) == n,
                f"{n} media items, {len(self.prompts)} prompts and {len(self.answers)} answers: one of each per example")
        require(all(len(a) > 0 for a in self.answers), "every example needs a non-empty answer")

    def __len__(self) -> int:
        return len(self.media)

    def subset(self, rows: Sequence[int]) -> "MediaExamples":
        rows = list(rows)
        return MediaExamples(self.media[rows], [self.prompts[i] for i in rows], [self.answers[i] for i in rows])

    def with_media(self, media: np.ndarray) -> "MediaExamples":
        """The same prompts and answers with other media (a blind control: zeroed or shuffled)."""
        return MediaExamples(media, self.prompts, self.answers)


def read_media_jsonl(path: Path, tokenizer: Tokenizer, media_tokens: int, shape: MediaShape, *,
                     prompt_field: str = "prompt", answer_field: str = "answer") -> tuple[MediaExamples, np.ndarray]:
    """Examples from JSONL rows {"image" | "video" | "audio": path (relative to the file), "prompt": text,
    "answer": text}, and each row's answer as a class index for stratified splits (0 for every row when
    some answer occurs fewer than 10 times, as captions do: then the split is plain random).

    The media field is the model's modality. A prompt without a placeholder gets one in front. Errors name
    the file and line.
    """
    path = Path(path)
    field_name, placeholder = shape.modality, shape.placeholder
    media, prompts, answers, texts = [], [], [], []
    for row in jsonl_rows(path, read_utf8(path)):
        where = f"{path} line {row.line}"
        missing = [f for f in (field_name, answer_field) if not isinstance(row.values.get(f), str)]
        require(not missing, f"{where}: needs string field(s) {missing}")
        prompt = row.values.get(prompt_field, "")
        require(isinstance(prompt, str), f"{where}: {prompt_field!r} must be a string")
        if placeholder not in prompt:
            prompt = placeholder + prompt
        media.append(read_media(path.parent / row.values[field_name], shape))
        prompts.append(media_prompt(tokenizer, prompt, media_tokens, placeholder=placeholder))
        texts.append(row.values[answer_field])
        answers.append(tokenizer.encode(texts[-1]))
    require(media, f"{path} has no examples")
    classes = {text: i for i, text in enumerate(sorted(set(texts)))}
    labels = np.array([classes[t] for t in texts])
    if np.bincount(labels).min() < 10:
        labels = np.zeros_like(labels)
    return MediaExamples(np.stack(media), prompts, answers), labels


def data_modality(data: str) -> Modality:
    """The modality of a --data value: the bundled sets' own, or the media field of a JSONL file's first row."""
    if data in BUNDLED_MODALITY:
        return BUNDLED_MODALITY[data]  # type: ignore[return-value]
    path = Path(data)
    require(path.is_file(), f"--data {data} is neither a bundled set ({', '.join(BUNDLED_MODALITY)}) nor a JSONL "
                            "file of media examples")
    first = next(iter(jsonl_rows(path, read_utf8(path))), None)
    require(first is not None, f"{path} has no examples")
    found = [m for m in PLACEHOLDERS if m in first.values]
    require(len(found) == 1, f"{path} line {first.line}: a row needs exactly one media field (image, video or "
                             f"audio: the file's modality), found {found or 'none'}")
    return found[0]  # type: ignore[return-value]


def moving_mnist_examples(tokenizer: Tokenizer, media_tokens: int, *, frames: int, count: int = 2000,
                          seed: int = 0) -> tuple[MediaExamples, np.ndarray]:
    """Clips of a drifting MNIST digit as "<video>direction:" -> " left" examples, and their direction indices."""
    clips, directions = moving_digits(count, frames=frames, seed=seed)
    prompt = media_prompt(tokenizer, "<video>direction:", media_tokens, placeholder=PLACEHOLDERS["video"])
    return (MediaExamples(clips, [prompt] * count, [tokenizer.encode(f" {DIRECTIONS[d]}") for d in directions]),
            directions)


def mnist_examples(tokenizer: Tokenizer, media_tokens: int) -> tuple[MediaExamples, np.ndarray]:
    """The bundled MNIST digits as "<image>digit:" -> " 7" examples, and their labels (for stratified splits)."""
    images, labels = bundled_mnist()
    prompt = media_prompt(tokenizer, "<image>digit:", media_tokens)
    return (MediaExamples(images[:, None].astype(np.float32) / 255.0, [prompt] * len(labels),
                          [tokenizer.encode(f" {label}") for label in labels]), labels)


def multimodal_splits(data: str, tokenizer: Tokenizer, media_tokens: int, shape: MediaShape, *,
                      val_fraction: float, test_fraction: float,
                      seed: int) -> tuple[MediaExamples, MediaExamples, MediaExamples]:
    """Train/val/test examples of `data`: "mnist", "moving-mnist" (bundled) or a media JSONL file; split
    stratified by answer."""
    if data in BUNDLED_MODALITY:
        require(shape.modality == BUNDLED_MODALITY[data] and (shape.image_size, shape.channels) == (28, 1),
                f"the bundled {data} set is 28x28 grey {BUNDLED_MODALITY[data]}: use --image-size 28 "
                f"--image-channels 1 (got {shape.modality}, {shape.image_size}, {shape.channels})")
        if data == "mnist":
            examples, labels = mnist_examples(tokenizer, media_tokens)
        else:
            examples, labels = moving_mnist_examples(tokenizer, media_tokens, frames=shape.frames)
    else:
        require(Path(data).is_file(), f"--data {data} is neither 'mnist' nor a JSONL file of media examples")
        examples, labels = read_media_jsonl(Path(data), tokenizer, media_tokens, shape)
    train_rows, val_rows, test_rows = stratified_indices(labels, (1 - val_fraction - test_fraction, val_fraction,
                                                                  test_fraction), seed=seed)
    for name, rows in (("validation", val_rows), ("test", test_rows)):
        require(len(rows) > 0, f"{data}: the {name} split is empty; add examples or raise its fraction")
    return examples.subset(train_rows), examples.subset(val_rows), examples.subset(test_rows)
