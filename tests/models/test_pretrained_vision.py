"""Pretrained vision towers from a local directory: the same patch tokens as transformers, self-describing checkpoints."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.data.multimodal import MEDIA_SLOT, media_prompt
from gptkit.errors import GptkitError
from gptkit.finetune.multimodal import build_multimodal, load_multimodal
from gptkit.models.gpt import GPT
from gptkit.models.multimodal import MultimodalConfig
from gptkit.models.pretrained_vision import CLIP_MEAN, CLIP_STD
from gptkit.models.projector import ProjectorConfig
from gptkit.models.vision import VisionConfig, VisionEncoder
from gptkit.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "image_size": 32, "patch_size": 8}  # a 4x4 grid of patches
SIGLIP_MEAN, SIGLIP_STD = [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]  # written to its preprocessor_config.json


def tiny_tower(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "clip":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY)).eval()
    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict:
    """kind -> (directory, the transformers model saved there, the image mean and std it expects)."""
    out = {}
    for kind in ("clip", "siglip"):
        directory = tmp_path_factory.mktemp(kind)
        model = tiny_tower(kind)
        model.save_pretrained(directory)
        stats = (CLIP_MEAN, CLIP_STD)  # CLIP's defaults: no preprocessor_config.json
        if kind == "siglip":
            (directory / "preprocessor_config.json").write_text(json.dumps({"image_mean": SIGLIP_MEAN,
                                                                            "image_std": SIGLIP_STD}))
            stats = (SIGLIP_MEAN, SIGLIP_STD)
        out[kind] = (directory, model, stats)
    return out


def reference_patch_tokens(model: torch.nn.Module, images: torch.Tensor, mean, std, drop: int) -> torch.Tensor:
    x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state[:, drop:]


@pytest.mark.parametrize("kind, class_tokens", [("clip", 1), ("siglip", 0)])
def test_the_encoder_gives_the_towers_own_patch_tokens(towers, kind, class_tokens):
    directory, model, (mean, std) = towers[kind]
    config = VisionConfig.from_pretrained(directory)
    assert (config.kind, config.image_size, config.channels, config.n_embd, config.grid, config.num_tokens) == \
           ("pretrained", 32, 3, 32, 4, 16)
    assert config.pretrained_config["model_type"] == f"{kind}_vision_model"
    assert config.pretrained_config["image_mean"] == pytest.approx(mean)
    encoder = VisionEncoder(config).eval()  # the architecture from the recorded config: random weights
    images = torch.rand(2, 3, 32, 32)
    expected = reference_patch_tokens(model, images, mean, std, class_tokens)
    with torch.no_grad():
        assert not torch.allclose(encoder(images), expected, atol=1e-3)
        encoder.load_pretrained_weights()  # from config.pretrained
        out = encoder(images)
    assert out.shape == (2, config.num_tokens, encoder.out_dim) == (2, 16, 32)
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_full_clip_model_directory_gives_its_vision_part(tmp_path):
    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    full = transformers.CLIPModel(transformers.CLIPConfig(vision_config=TINY, text_config=text,
                                                          projection_dim=16)).eval()
    full.save_pretrained(tmp_path)
    config = VisionConfig.from_pretrained(tmp_path)
    assert config.pretrained_config["model_type"] == "clip_vision_model" and config.num_tokens == 16
    encoder = VisionEncoder(config).eval()
    encoder.load_pretrained_weights(tmp_path)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(images), reference_patch_tokens(full.vision_model, images, CLIP_MEAN, CLIP_STD, 1),
                              atol=1e-5)


@pytest.mark.parametrize("kind, reduction", [("clip", "shuffle"), ("siglip", "pool")])
def test_a_checkpoint_needs_the_towers_directory_no_more(towers, tmp_path, kind, reduction):
    source = tmp_path / "tower"
    shutil.copytree(towers[kind][0], source)
    config = MultimodalConfig(fusion="early", vision=VisionConfig.from_pretrained(source),
                              projector=ProjectorConfig(reduction, 2))  # the 4x4 grid -> 2x2 = 4 media tokens
    assert MultimodalConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # the JSON round trip
    tokenizer = Tokenizer.train_char(["digit: 0123456789 "])
    torch.manual_seed(0)
    model = build_multimodal(GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2,
                                             n_embd=32)), config).eval()
    model.vision.load_pretrained_weights()
    prompt = media_prompt(tokenizer, "<image>digit:", config.media_tokens)
    idx = torch.tensor([prompt]).clamp_min(0)
    mask = torch.tensor([[t == MEDIA_SLOT for t in prompt]])
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        before = model(idx, images, mask)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    model.write_checkpoint_files(checkpoint)
    tokenizer.save(checkpoint)
    shutil.rmtree(source)
    spec = json.loads((checkpoint / "multimodal.json").read_text())["vision"]
    assert spec["kind"] == "pretrained" and spec["pretrained_config"]["config"]["hidden_size"] == 32
    loaded, _ = load_multimodal(checkpoint)
    with torch.no_grad():
        assert torch.allclose(loaded(idx, images, mask), before, atol=1e-5)
    with pytest.raises(GptkitError, match="does not exist"):  # the weights of a training start need the directory
        loaded.vision.load_pretrained_weights()


def test_bad_directories_and_images_are_clear_errors(towers, tmp_path):
    with pytest.raises(GptkitError, match=f"{tmp_path / 'missing'} does not exist: expected a local directory"):
        VisionConfig.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptkitError, match="empty has no config.json: expected .*CLIP or SigLIP"):
        VisionConfig.from_pretrained(tmp_path / "empty")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(GptkitError, match="holds a 'bert' model; supported vision towers are clip_vision_model"):
        VisionConfig.from_pretrained(tmp_path / "bert")
    config = VisionConfig.from_pretrained(towers["clip"][0])
    encoder = VisionEncoder(config)
    with pytest.raises(GptkitError, match=r"images must be \(batch, 3, 32, 32\), got \(2, 1, 32, 32\)"):
        encoder(torch.rand(2, 1, 32, 32))  # grey images
    with pytest.raises(GptkitError, match="takes RGB images: channels must be 3, got 1"):
        dataclasses.replace(config, channels=1).validate()
    with pytest.raises(GptkitError, match=r"image_size \(28\) must be the pretrained tower's image_size \(32\)"):
        dataclasses.replace(config, image_size=28).validate()
    with pytest.raises(GptkitError, match=r"needs the tower's description .*VisionConfig.from_pretrained\('dir'\)"):
        VisionConfig(kind="pretrained", pretrained="dir", channels=3).validate()
    with pytest.raises(GptkitError, match="holds a different vision tower"):
        encoder.load_pretrained_weights(towers["siglip"][0])
    with pytest.raises(GptkitError, match="'cnn' vision encoder has no pretrained weights"):
        VisionEncoder(VisionConfig(kind="cnn", n_embd=32, n_layer=0)).load_pretrained_weights(towers["clip"][0])


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_a_timm_tower_without_timm_says_how_to_install_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 0}))
    with pytest.raises(GptkitError, match="pip install timm"):
        VisionConfig.from_pretrained(tmp_path)


def test_gptkit_finetune_trains_on_a_pretrained_tower_and_can_keep_it_frozen(towers, tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from gptkit.checkpoint import save_checkpoint
    from gptkit.data.images import bundled_mnist

    directory, hf_model, _ = towers["clip"]
    digits, labels = bundled_mnist()
    rows = []
    for i in range(20):  # colour pictures of real digits, 32x32 as the tower takes them
        rgb = np.stack([digits[i], digits[i] // 2, 255 - digits[i]], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).resize((32, 32)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "prompt": "digit:", "answer": f" {labels[i]}"})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = Tokenizer.train_char(["digit: 0123456789 "])
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base", GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=1,
                                                       n_head=2, n_embd=32)), tokenizer)
    done = subprocess.run([sys.executable, "-m", "gptkit", "finetune", "--checkpoint", str(tmp_path / "base"),
                           "--task", "multimodal", "--data", str(tmp_path / "data.jsonl"), "--vision", "pretrained",
                           "--vision-tower", str(directory), "--freeze-encoder", "--method", "full", "--max-iters",
                           "3", "--eval-interval", "3", "--val-fraction", "0.2", "--test-fraction", "0.2",
                           "--out", str(tmp_path / "ft"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "ft" / "best" / "multimodal.json").read_text())
    assert spec["vision"]["kind"] == "pretrained" and spec["vision"]["image_size"] == 32
    model, _ = load_multimodal(tmp_path / "ft" / "best")
    tower_state = hf_model.state_dict()
    loaded = {k.split("tower.", 1)[1].split(".", 1)[1]: v for k, v in model.vision.state_dict().items()
              if k.startswith("tower.")}
    shared = [k for k in tower_state if k in loaded]
    assert shared and all(torch.equal(tower_state[k], loaded[k]) for k in shared)  # pretrained and kept frozen
    missing = subprocess.run([sys.executable, "-m", "gptkit", "finetune", "--checkpoint", str(tmp_path / "base"),
                              "--task", "multimodal", "--data", str(tmp_path / "data.jsonl"), "--vision",
                              "pretrained", "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert missing.returncode == 2 and "--vision-tower" in missing.stderr
