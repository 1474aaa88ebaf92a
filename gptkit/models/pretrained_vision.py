"""Pretrained vision towers (CLIP/SigLIP, timm ViT) read from a local directory; knows nothing of text, checkpoints or training.

    spec = describe_tower("models/siglip-base")   # a JSON-safe dict: the tower's own config and its geometry
    tower = PretrainedTower(spec)                 # the architecture from the dict alone (random weights)
    tower.load_weights("models/siglip-base")      # the directory's pretrained weights, for training
    tokens = tower(images)                        # (B, 3, S, S) in [0, 1] -> (B, (S / patch)^2, hidden)

Never downloads (`local_files_only=True`). The spec records everything needed to rebuild the tower, so
a checkpoint holding it (and the weights) needs the original directory no more. transformers and timm
are imported only when a tower is used: both are heavy, and timm is optional.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from gptkit.errors import GptkitError, require

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN, SIGLIP_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
# transformers vision model type -> (model class, default image mean, default image std)
TRANSFORMERS_TOWERS = {
    "clip_vision_model": ("CLIPVisionModel", CLIP_MEAN, CLIP_STD),
    "siglip_vision_model": ("SiglipVisionModel", SIGLIP_MEAN, SIGLIP_STD),
}
SPEC_KEYS = ("library", "model_type", "config", "image_mean", "image_std", "image_size", "patch_size", "hidden_size",
             "num_layers", "num_heads")
EXPECTED = ("a local directory holding a transformers CLIP or SigLIP vision model (config.json and model.safetensors, "
            "as save_pretrained writes them; a full CLIPModel/SiglipModel directory works too) or a timm ViT saved "
            "with timm's save_for_hf")


def describe_tower(path: str | Path) -> dict[str, Any]:
    """The JSON-safe description of the tower in directory `path` (see `SPEC_KEYS`); reads config files only."""
    path = Path(path)
    require(path.exists(), f"pretrained vision tower {path} does not exist: expected {EXPECTED}")
    require(path.is_dir(), f"pretrained vision tower {path} is not a directory: expected {EXPECTED}")
    require((path / "config.json").is_file(), f"{path} has no config.json: expected {EXPECTED}")
    raw = read_json(path / "config.json")
    if "architecture" in raw and "model_type" not in raw:  # timm's save_for_hf layout
        return _describe_timm(path, raw)
    return _describe_transformers(path, raw)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptkitError(f"{path} is not valid JSON: {e}") from None
    require(isinstance(data, dict), f"{path} must hold a JSON object")
    return data


def _describe_transformers(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise GptkitError(f"{path}/config.json is not a transformers config I can read ({e}): expected {EXPECTED}") \
            from None
    vision = getattr(config, "vision_config", None) or config  # a full CLIPModel/SiglipModel: its vision part
    model_type = getattr(vision, "model_type", raw.get("model_type"))
    require(model_type in TRANSFORMERS_TOWERS,
            f"{path} holds a {raw.get('model_type')!r} model; supported vision towers are "
            f"{', '.join(TRANSFORMERS_TOWERS)} (or a full model with such a vision_config), or a timm ViT")
    _, mean, std = TRANSFORMERS_TOWERS[model_type]
    mean, std = _image_stats(path, mean, std)
    return {"library": "transformers", "model_type": model_type,
            "config": json.loads(vision.to_json_string(use_diff=False)),  # JSON-safe: what multimodal.json holds
            "image_mean": mean, "image_std": std, "image_size": int(vision.image_size),
            "patch_size": int(vision.patch_size), "hidden_size": int(vision.hidden_size),
            "num_layers": int(vision.num_hidden_layers), "num_heads": int(vision.num_attention_heads)}


def _image_stats(path: Path, mean: list[float], std: list[float]) -> tuple[list[float], list[float]]:
    """The preprocessor's image mean and std if the directory has a preprocessor_config.json, else the defaults."""
    file = path / "preprocessor_config.json"
    if file.is_file():
        pre = read_json(file)
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    for name, value in (("image_mean", mean), ("image_std", std)):
        require(isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value),
                f"{file}: {name} must be three numbers (one per RGB channel), got {value!r}")
    require(all(v > 0 for v in std), f"{file}: image_std must be positive, got {std}")
    return [float(v) for v in mean], [float(v) for v in std]


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise GptkitError("this vision tower is a timm model, and timm is not installed: pip install timm") from None
    return timm


def _describe_timm(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    config = {"architecture": raw["architecture"], "model_args": raw.get("model_args", {})}
    model = _build_timm(config)
    pretrained_cfg = raw.get("pretrained_cfg", {})
    return {"library": "timm", "model_type": raw["architecture"], "config": config,
            "image_mean": [float(v) for v in pretrained_cfg.get("mean", CLIP_MEAN)],
            "image_std": [float(v) for v in pretrained_cfg.get("std", CLIP_STD)],
            "image_size": model.patch_embed.img_size[0], "patch_size": model.patch_embed.patch_size[0],
            "hidden_size": int(model.embed_dim), "num_layers": len(model.blocks),
            "num_heads": int(model.blocks[0].attn.num_heads)}


def _build_timm(config: dict[str, Any], weights: Path | None = None) -> nn.Module:
    timm = _import_timm()
    overlay = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights)}} if weights else {}
    try:  # num_classes=0: no classifier head, the features only
        model = timm.create_model(config["architecture"], num_classes=0, **config["model_args"], **overlay)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise GptkitError(f"timm cannot build {config['architecture']!r}: {e}") from None
    embed = getattr(model, "patch_embed", None)
    require(embed is not None and hasattr(model, "blocks") and hasattr(model, "forward_features"),
            f"timm model {config['architecture']!r} is not a ViT (no patch_embed/blocks): only timm ViTs are supported")
    require(embed.img_size[0] == embed.img_size[1] and embed.patch_size[0] == embed.patch_size[1],
            f"timm model {config['architecture']!r} has non-square images or patches, which are not supported")
    return model


class PretrainedTower(nn.Module):
    """A transformers CLIP/SigLIP or timm ViT vision tower built from `describe_tower`'s spec (random weights).

    Takes RGB images in [0, 1], normalises them with the tower's own mean and std, and returns the last
    hidden state's patch tokens, row-major: CLIP's class token (and a timm ViT's prefix tokens) dropped.
    SigLIP's last hidden state is after its post-layernorm; CLIP's has none, as CLIP applies its
    post-layernorm to the class token alone (LLaVA reads CLIP's patch tokens the same way).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.num_patches = (spec["image_size"] // spec["patch_size"]) ** 2
        if spec["library"] == "timm":
            self.model = _build_timm(spec["config"])
        else:
            self.model = self._transformers_class()(self._transformers_config())
        # Not persistent: they come from the spec, so the state dict holds the tower's own weights only.
        self.register_buffer("mean", torch.tensor(spec["image_mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec["image_std"]).view(1, 3, 1, 1), persistent=False)

    def _transformers_class(self) -> type:
        import transformers

        require(self.spec["model_type"] in TRANSFORMERS_TOWERS,
                f"unsupported vision tower type {self.spec['model_type']!r}: expected one of "
                f"{', '.join(TRANSFORMERS_TOWERS)}")
        return getattr(transformers, TRANSFORMERS_TOWERS[self.spec["model_type"]][0])

    def _transformers_config(self) -> Any:
        return self._transformers_class().config_class.from_dict(self.spec["config"])

    def load_weights(self, path: str | Path) -> None:
        """Copy the pretrained weights of directory `path` (the one the spec describes) into the tower."""
        path = Path(path)
        spec = describe_tower(path)  # the same checks as at configuration time: path, config.json, model type
        require(all(spec[k] == self.spec[k] for k in ("library", "model_type", "image_size", "patch_size",
                                                       "hidden_size", "num_layers", "num_heads")),
                f"{path} holds a different vision tower than this model was configured with: rebuild the config "
                "with VisionConfig.from_pretrained(path)")
        if spec["library"] == "timm":
            weights = next((path / name for name in ("model.safetensors", "pytorch_model.bin")
                            if (path / name).is_file()), None)
            require(weights is not None, f"{path} has no model.safetensors or pytorch_model.bin: no timm weights")
            state = _build_timm(spec["config"], weights).state_dict()
        else:
            try:
                loaded, info = self._transformers_class().from_pretrained(str(path), local_files_only=True,
                                                                          output_loading_info=True)
            except (OSError, ValueError, RuntimeError) as e:
                raise GptkitError(f"cannot read the weights in {path}: {e}") from None
            require(not info["missing_keys"] and not info["mismatched_keys"],
                    f"{path} lacks weights of the vision tower (missing {sorted(info['missing_keys'])[:5]}, "
                    f"mismatched {sorted(info['mismatched_keys'])[:5]}): is it a {self.spec['model_type']} directory?")
            state = loaded.state_dict()
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise GptkitError(f"the weights in {path} do not fit this vision tower: {e}") from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.mean.dtype
        x = (images.to(dtype) - self.mean) / self.std
        if self.spec["library"] == "timm":
            hidden = self.model.forward_features(x)
        else:
            hidden = self.model(pixel_values=x).last_hidden_state
        return hidden[:, -self.num_patches:]  # patch tokens come last, after any class or register tokens
