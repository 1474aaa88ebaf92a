"""A multimodal checkpoint: its spec file (multimodal.json), how the model is built from a GPT, and its loader.

`build_multimodal(gpt, config)` composes the model (`gptkit.models.multimodal.MultimodalGPT`) and, for
`fusion="cross"`, first adds gated cross-attention to the GPT from outside (`gptkit.adapt.cross_attention`).
A checkpoint directory holds `multimodal.json` (the `MultimodalConfig`), `config.json` (the GPT's),
`model.safetensors` (every weight: GPT, encoder, projector, cross-attention) and `tokenizer.json`;
`gptkit.api.load` dispatches such a directory here. Knows nothing of training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptkit.adapt.cross_attention import add_cross_attention
from gptkit.adapt.peft import PeftConfig, apply_peft, merge_peft
from gptkit.checkpoint import (CONFIG_FILE, MULTIMODAL_FILE, TOKENIZER_FILE, WEIGHTS_FILE, read_safetensors,
                               resolve_checkpoint)
from gptkit.config import ModelConfig
from gptkit.data.multimodal import MediaShape
from gptkit.errors import GptkitError, require
from gptkit.models.gpt import GPT, unshared_state
from gptkit.models.multimodal import MediaContext, MultimodalConfig, MultimodalGPT
from gptkit.tokenizer import Tokenizer


class MultimodalModel(MultimodalGPT):
    """A `MultimodalGPT` that writes and reads its own checkpoint files (the training loop saves it like any model).

    `peft`: the method applied to its GPT (LoRA on the language model), recorded so a checkpoint rebuilds it.
    """

    peft: PeftConfig | None = None

    def write_checkpoint_files(self, directory: Path) -> None:
        self.gpt.config.save(directory / CONFIG_FILE)
        spec = {**self.config.to_dict(), **({"peft": self.peft.to_dict()} if self.peft is not None else {})}
        (directory / MULTIMODAL_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        save_file(unshared_state(self.state_dict()), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})

    def load_checkpoint_weights(self, directory: Path) -> None:
        state = read_safetensors(directory / WEIGHTS_FILE)
        missing, unexpected = self.load_state_dict(state, strict=False)
        tied = {"gpt.lm_head.weight"} if self.gpt.config.tie_embeddings else set()
        require(not (set(missing) - tied) and not unexpected,
                f"{directory / WEIGHTS_FILE} does not match {MULTIMODAL_FILE}: missing {sorted(set(missing) - tied)}, "
                f"unexpected {sorted(unexpected)}")


def media_shape(config: MultimodalConfig) -> MediaShape:
    """What one media item must look like for a model of `config` (what the readers resize or fit it to)."""
    return MediaShape(modality=config.modality, image_size=config.vision.image_size, channels=config.vision.channels,
                      frames=config.frames, clip_samples=config.clip_samples)


def build_multimodal(gpt: GPT, config: MultimodalConfig, peft: PeftConfig | None = None) -> MultimodalModel:
    """The multimodal model around `gpt`, rewritten in place: first `peft` (e.g. LoRA on the language model;
    "full" changes nothing), then cross-attention for fusion="cross". The encoder, projector and
    cross-attention are new and always trainable."""
    config.validate()
    context = MediaContext()
    if peft is not None and peft.method != "full":
        apply_peft(gpt, peft)
    if config.fusion == "cross":
        add_cross_attention(gpt, context, every=config.cross_every)
    model = MultimodalModel(gpt, config, context)
    model.peft = peft if peft is not None and peft.method != "full" else None
    return model


def is_multimodal(path: Path) -> bool:
    return (Path(path) / MULTIMODAL_FILE).is_file()


def load_multimodal(path: str | Path, *, device: str | torch.device = "cpu",
                    merge: bool = True) -> tuple[MultimodalModel, Tokenizer]:
    """A multimodal checkpoint, ready for inference (`merge`: fold a LoRA update into the GPT's weights)."""
    path = resolve_checkpoint(path)
    try:
        spec = json.loads((path / MULTIMODAL_FILE).read_text())
    except json.JSONDecodeError as e:
        raise GptkitError(f"{path / MULTIMODAL_FILE} is not valid JSON: {e}") from None
    require(isinstance(spec, dict), f"{path / MULTIMODAL_FILE} must hold a mapping")
    peft = PeftConfig.from_dict(spec.pop("peft")) if "peft" in spec else None
    model = build_multimodal(GPT(ModelConfig.load(path / CONFIG_FILE)), MultimodalConfig.from_dict(spec), peft)
    model.load_checkpoint_weights(path)
    if merge and peft is not None and peft.method in ("lora", "adalora"):
        merge_peft(model.gpt)  # the same outputs, no extra cost per token
    return model.to(device).eval(), Tokenizer.from_file(path / TOKENIZER_FILE)
