"""Images for multimodal models: files and uploaded bytes to float pixel arrays, and the bundled MNIST digits.

    pixels = read_image("cat.png", size=28, channels=1)        # (1, 28, 28) float32 in [0, 1]
    images, labels = bundled_mnist()                           # (5000, 28, 28) uint8, (5000,) int64

Pillow decodes every format it knows (PNG, JPEG, GIF, BMP, WebP, ...). A picture is converted to grey
("L") or RGB, transparency composited on white, and resized to size x size (bicubic; the aspect ratio is
not kept: the encoders take square inputs). Corrupt or unreadable files are errors that name the file.
Knows nothing of models.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gptkit.errors import GptkitError, require

BUNDLED_DIR = Path(__file__).resolve().parent / "images"
MNIST_FILE = BUNDLED_DIR / "mnist_5k_28x28.csv.gz"
MAX_PIXELS = 64_000_000  # a decompression bomb guard: larger pictures are refused before decoding


def _pixels(image: Image.Image, size: int, channels: int, what: str) -> np.ndarray:
    require(channels in (1, 3), f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    require(isinstance(size, int) and size >= 1, f"size must be a positive integer, got {size!r}")
    require(image.width * image.height <= MAX_PIXELS,
            f"{what} is {image.width}x{image.height} pixels, more than the {MAX_PIXELS:,} accepted")
    try:
        if image.mode in ("RGBA", "LA", "P", "PA"):  # transparency: composite on white, as a viewer shows it
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:  # truncated data surfaces only when the pixels are decoded
        raise GptkitError(f"{what} could not be decoded as an image: {e}") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def read_image(path: str | Path, *, size: int, channels: int = 3) -> np.ndarray:
    """(channels, size, size) float32 pixels in [0, 1] of an image file."""
    path = Path(path)
    require(path.is_file(), f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return _pixels(image, size, channels, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GptkitError(f"image {path} is not a readable image file: {e}") from None


def decode_image_bytes(data: bytes, *, size: int, channels: int = 3, what: str = "the image") -> np.ndarray:
    """`read_image` for bytes already in memory (an upload, a data URL's payload)."""
    require(len(data) > 0, f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _pixels(image, size, channels, what)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GptkitError(f"{what} is not a readable image: {e}") from None


def load_pixels(image: str | Path | np.ndarray, size: int, channels: int) -> np.ndarray:
    """An image file's pixels, or a (channels, size, size) array in [0, 1] checked as it is."""
    if isinstance(image, (str, Path)):
        return read_image(image, size=size, channels=channels)
    array = np.asarray(image, dtype=np.float32)
    require(array.shape == (channels, size, size), f"an image array must be ({channels}, {size}, {size}) with values "
                                                   f"in [0, 1], got shape {array.shape}")
    return array


def bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 5,000 MNIST digits: images (N, 28, 28) uint8 (white on black) and labels (N,) int64."""
    with gzip.open(MNIST_FILE, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def stratified_indices(labels: np.ndarray, fractions: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    """Index arrays, one per fraction (the last takes the rest), each holding the same share of every label."""
    require(all(f > 0 for f in fractions) and sum(fractions) <= 1.0 + 1e-9,
            f"fractions must be positive and sum to at most 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.cumsum([round(f * len(rows)) for f in fractions])
        bounds[-1] = len(rows) if abs(sum(fractions) - 1.0) < 1e-9 else bounds[-1]
        for i, (lo, hi) in enumerate(zip([0, *bounds[:-1]], bounds)):
            parts[i] += rows[lo:hi].tolist()
    return [rng.permutation(np.array(p, dtype=np.int64)) for p in parts]
