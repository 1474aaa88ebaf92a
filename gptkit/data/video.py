"""Video clips for multimodal models: frames read from a directory, an array file or an animated GIF, and the
moving-digits set made from the bundled MNIST digits; knows nothing of models.

    clip = read_video("clip.gif", frames=4, size=28, channels=1)   # (4, 1, 28, 28) float32 in [0, 1]
    clips, directions = moving_digits(1000, frames=4, seed=0)       # DIRECTIONS[directions[i]] is clip i's

Moving digits: a digit (shrunk to half the frame) drifts by `step` pixels a frame in one of four
directions, wrapping around the edges. Its start is uniform over the frame whatever the direction, so
every single frame is distributed the same for all four: the direction can only be read across frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from gptkit.data.images import bundled_mnist, read_image
from gptkit.errors import GptkitError, require

DIRECTIONS = ("up", "down", "left", "right")
_MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def sample_frames(total: int, frames: int) -> list[int]:
    """`frames` indices spread evenly over `total` frames (first and last included)."""
    require(total >= 1, "the clip has no frames")
    return np.linspace(0, total - 1, frames).round().astype(int).tolist()


def _as_clip(array: np.ndarray, channels: int, where: str) -> np.ndarray:
    """(F, H, W), (F, H, W, C) or (F, C, H, W) numbers -> (F, channels, H, W) float32 in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[:, None]
    require(array.ndim == 4, f"{where}: an array clip must be (frames, H, W), (frames, H, W, C) or (frames, C, H, W); "
                             f"got shape {array.shape}")
    if array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    array = array.astype(np.float32)
    if array.max(initial=0) > 1.0:
        array = array / 255.0
    require(array.shape[1] == channels, f"{where}: frames have {array.shape[1]} channel(s), the model takes {channels}")
    return array


def _resized(frame: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (C, size, size), each channel resized bicubically (as `read_image` does)."""
    channels = [Image.fromarray(np.uint8(np.clip(c, 0, 1) * 255)).resize((size, size), Image.Resampling.BICUBIC)
                for c in frame]
    return np.stack([np.asarray(c, dtype=np.float32) / 255.0 for c in channels])


def read_video(path: str | Path, *, frames: int, size: int, channels: int = 3) -> np.ndarray:
    """(frames, channels, size, size) float32: a directory of frame images (in name order), a .npy/.npz array,
    or an animated GIF, with `frames` frames sampled evenly."""
    path = Path(path)
    require(path.exists(), f"video {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        require(files, f"video directory {path} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
        return np.stack([read_image(files[i], size=size, channels=channels) for i in sample_frames(len(files), frames)])
    if path.suffix in (".npy", ".npz"):
        try:
            data = np.load(path, allow_pickle=False)
            array = data[data.files[0]] if isinstance(data, np.lib.npyio.NpzFile) else data
        except (ValueError, OSError) as e:
            raise GptkitError(f"video {path} is not a readable numpy array: {e}") from None
        clip = _as_clip(array, channels, str(path))
        chosen = clip[sample_frames(len(clip), frames)]
        return chosen if chosen.shape[-2:] == (size, size) else np.stack([_resized(frame, size) for frame in chosen])
    try:
        with Image.open(path) as gif:
            all_frames = [frame.copy() for frame in ImageSequence.Iterator(gif)]
    except (UnidentifiedImageError, OSError) as e:
        raise GptkitError(f"video {path} is not a frame directory, a .npy/.npz array or an animated image: {e}") from None
    picked = [all_frames[i] for i in sample_frames(len(all_frames), frames)]
    out = []
    for i, frame in enumerate(picked):
        frame_path = f"{path} frame {i}"
        image = frame.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0
        out.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
        require(out[-1].shape == (channels, size, size), f"{frame_path} could not be decoded")
    return np.stack(out)


def moving_digits(count: int, *, frames: int = 4, size: int = 28, step: int = 4,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` clips (count, frames, 1, size, size) float32 of a drifting MNIST digit, and each clip's direction
    (an index into DIRECTIONS), balanced across the four."""
    require(count >= 1 and frames >= 2, f"need count >= 1 and frames >= 2, got {count}, {frames}")
    rng = np.random.default_rng(seed)
    digits, _ = bundled_mnist()
    half = size // 2
    small = [np.asarray(Image.fromarray(digits[i]).resize((half, half), Image.Resampling.BILINEAR), dtype=np.float32)
             / 255.0 for i in rng.choice(len(digits), count)]
    directions = np.arange(count) % len(DIRECTIONS)
    rng.shuffle(directions)
    clips = np.zeros((count, frames, 1, size, size), dtype=np.float32)
    for n, (digit, direction) in enumerate(zip(small, directions)):
        canvas = np.zeros((size, size), dtype=np.float32)
        canvas[:half, :half] = digit
        start = rng.integers(0, size, 2)  # uniform, whatever the direction
        dy, dx = _MOVES[DIRECTIONS[direction]]
        for t in range(frames):
            clips[n, t, 0] = np.roll(canvas, (start[0] + t * step * dy, start[1] + t * step * dx), axis=(0, 1))
    return clips, directions
