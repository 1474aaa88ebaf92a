"""Video clips: reading frames from a directory, an array file or a GIF; the moving-digits set and its controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gptkit.data.video import DIRECTIONS, moving_digits, read_video
from gptkit.errors import GptkitError
from gptkit.models.gpt import GPT
from gptkit.config import ModelConfig
from gptkit.models.multimodal import MultimodalConfig, MultimodalGPT
from gptkit.models.vision import VisionConfig


def test_moving_digits_direction_is_only_readable_across_frames():
    from sklearn.linear_model import LogisticRegression

    clips, directions = moving_digits(1200, frames=4, seed=0)
    assert clips.shape == (1200, 4, 1, 28, 28) and np.bincount(directions).tolist() == [300] * 4
    assert 0.0 <= clips.min() and clips.max() <= 1.0
    first = clips[:, 0].reshape(len(clips), -1)
    train, test = slice(0, 900), slice(900, None)

    def accuracy(features):
        model = LogisticRegression(max_iter=300).fit(features[train], directions[train])
        return model.score(features[test], directions[test])

    assert accuracy(first) < 0.4  # one frame: chance is 0.25
    # the centroid's shift between two frames gives the direction (a control that the clips do move)
    ys, xs = np.mgrid[0:28, 0:28]
    def centroid(frames):  # circular means, since the digit wraps around the edges
        angle = 2 * np.pi / 28
        w = frames.reshape(len(frames), 28, 28)
        return np.stack([np.angle((w * np.exp(1j * angle * c)).sum((1, 2))) for c in (ys, xs)], axis=1)
    shift = np.angle(np.exp(1j * (centroid(clips[:, 1]) - centroid(clips[:, 0]))))
    assert accuracy(np.concatenate([shift, np.abs(shift)], axis=1)) > 0.9
    assert DIRECTIONS == ("up", "down", "left", "right")


def test_a_clip_reads_the_same_from_frames_an_array_and_a_gif(tmp_path):
    clips, _ = moving_digits(1, frames=4, seed=1)
    frames = (clips[0, :, 0] * 255).round().astype(np.uint8)
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{i:03d}.png")
    np.save(tmp_path / "clip.npy", frames)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "clip.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    from_dir = read_video(tmp_path / "frames", frames=4, size=28, channels=1)
    assert from_dir.shape == (4, 1, 28, 28)
    assert np.allclose(read_video(tmp_path / "clip.npy", frames=4, size=28, channels=1), from_dir, atol=1 / 255)
    assert np.allclose(read_video(tmp_path / "clip.gif", frames=4, size=28, channels=1), from_dir, atol=2 / 255)
    two = read_video(tmp_path / "frames", frames=2, size=28, channels=1)  # first and last frame
    assert np.allclose(two, from_dir[[0, 3]])
    with pytest.raises(GptkitError, match="does not exist"):
        read_video(tmp_path / "nothing", frames=4, size=28)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptkitError, match="holds no frame images"):
        read_video(tmp_path / "empty", frames=4, size=28)
    (tmp_path / "bad.gif").write_bytes(b"GIF89a broken")
    with pytest.raises(GptkitError, match="bad.gif"):
        read_video(tmp_path / "bad.gif", frames=4, size=28)
    with pytest.raises(GptkitError, match="channel"):
        read_video(tmp_path / "clip.npy", frames=4, size=28, channels=3)


def test_clip_frames_get_their_own_tokens_in_time_order():
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=32, block_size=64, n_layer=1, n_head=2, n_embd=32))
    config = MultimodalConfig(modality="video", vision=VisionConfig(kind="vit", n_embd=32, n_layer=1), frames=4)
    model = MultimodalGPT(gpt, config).eval()
    assert config.media_tokens == 4 * 16
    clip = torch.from_numpy(moving_digits(2, frames=4, seed=2)[0])
    with torch.no_grad():
        tokens = model.media_tokens(clip)
        reversed_tokens = model.media_tokens(clip.flip(1))
    assert tokens.shape == (2, 64, 32)
    # the temporal embedding: the same frames in another order are not just the same tokens reordered
    per_frame = tokens.view(2, 4, 16, 32)
    assert not torch.allclose(reversed_tokens.view(2, 4, 16, 32).flip(1), per_frame, atol=1e-4)
    with pytest.raises(GptkitError, match="clips of 4 frames"):
        model.media_tokens(clip[:, :3])
    with pytest.raises(GptkitError, match="clips of 4 frames"):
        model.media_tokens(clip[:, 0])
