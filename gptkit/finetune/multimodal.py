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
from gptkit.checkpoint import (CONFIG_FILE, MULTIMODAL_FILE, TOKENIZER_FILE, WEIGHTS_FILE, read_safetensors,
                               resolve_checkpoint, unshared_state)
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError, require
from gptkit.models.gpt import GPT
from gptkit.models.multimodal import MediaContext, MultimodalConfig, MultimodalGPT
from gptkit.tokenizer import Tokenizer


class MultimodalModel(MultimodalGPT):
    """A `MultimodalGPT` that writes and reads its own checkpoint files (the training loop saves it like any model)."""

    def write_checkpoint_files(self, directory: Path) -> None:
        self.gpt.config.save(directory / CONFIG_FILE)
        (directory / MULTIMODAL_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_file(unshared_state(self.state_dict()), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})

    def load_checkpoint_weights(self, directory: Path) -> None:
        state = read_safetensors(directory / WEIGHTS_FILE)
        missing, unexpected = self.load_state_dict(state, strict=False)
        tied = {"gpt.lm_head.weight"} if self.gpt.config.tie_embeddings else set()
        require(not (set(missing) - tied) and not unexpected,
                f"{directory / WEIGHTS_FILE} does not match {MULTIMODAL_FILE}: missing {sorted(set(missing) - tied)}, "
                f"unexpected {sorted(unexpected)}")


def build_multimodal(gpt: GPT, config: MultimodalConfig) -> MultimodalModel:
    """The multimodal model around `gpt` (rewritten in place with cross-attention for fusion="cross")."""
    config.validate()
    context = MediaContext()
    if config.fusion == "cross":
        add_cross_attention(gpt, context, every=config.cross_every)
    return MultimodalModel(gpt, config, context)


def is_multimodal(path: Path) -> bool:
    return (Path(path) / MULTIMODAL_FILE).is_file()


def load_multimodal(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[MultimodalModel, Tokenizer]:
    path = resolve_checkpoint(path)
    try:
        config = MultimodalConfig.from_dict(json.loads((path / MULTIMODAL_FILE).read_text()))
    except json.JSONDecodeError as e:
        raise GptkitError(f"{path / MULTIMODAL_FILE} is not valid JSON: {e}") from None
    model = build_multimodal(GPT(ModelConfig.load(path / CONFIG_FILE)), config)
    model.load_checkpoint_weights(path)
    return model.to(device).eval(), Tokenizer.from_file(path / TOKENIZER_FILE)
