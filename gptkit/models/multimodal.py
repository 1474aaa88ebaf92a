"""A multimodal GPT by composition: an encoder and a projector feed the one GPT; no second language model.

    model = MultimodalGPT(gpt, MultimodalConfig(fusion="early", vision=VisionConfig(kind="cnn")))
    logits = model(idx, images, media_mask)   # media_mask True where an image's tokens go (early fusion)

Fusion, by `MultimodalConfig.fusion`:
- "early": the image's projected tokens replace placeholder slots of the input sequence (`media_mask`),
  so the GPT reads them as it reads word embeddings (`GPT.hidden_states(inputs_embeds=...)`).
- "cross": the sequence holds text only; gated cross-attention layers between the GPT's blocks read the
  image tokens (Flamingo). Those layers are added to a built GPT from outside
  (`gptkit.adapt.cross_attention`), and read the media of the running batch from a shared
  `MediaContext`, which this module fills for the length of a forward pass.

Knows nothing of files, tokenizers or training: images come in as tensors (B, C, H, W) in [0, 1].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from gptkit.errors import GptkitError, require, require_known_fields
from gptkit.models.gpt import GPT
from gptkit.models.projector import Projector, ProjectorConfig
from gptkit.models.vision import VisionConfig, VisionEncoder

FUSIONS = ("early", "cross")


@dataclass
class MultimodalConfig:
    fusion: Literal["early", "cross"] = "early"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    cross_every: int = 1
    """cross: a gated cross-attention layer after every this many GPT blocks (after the last block always)."""
    frames: int = 1
    """Video: frames per clip (1: still images). Each frame goes through the image encoder, gets a learned
    temporal position embedding, and keeps its own tokens, so the model can read motion across frames."""

    def validate(self) -> None:
        require(self.fusion in FUSIONS, f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        self.vision.validate()
        self.projector.validate()
        require(isinstance(self.cross_every, int) and self.cross_every >= 1,
                f"cross_every must be an integer >= 1, got {self.cross_every!r}")
        require(isinstance(self.frames, int) and self.frames >= 1, f"frames must be an integer >= 1, got {self.frames!r}")
        tokens = self.vision.num_tokens
        if self.projector.reduction != "none":
            require(self.vision.grid % self.projector.factor == 0,
                    f"the encoder's {self.vision.grid}x{self.vision.grid} grid cannot be reduced by "
                    f"{self.projector.factor}x{self.projector.factor} blocks")
        require(self.projector.tokens_out(tokens) >= 1, "the projector leaves no media tokens")

    @property
    def media_tokens(self) -> int:
        """Tokens one image (or one clip of `frames` frames) becomes in the language model's input."""
        return self.frames * self.projector.tokens_out(self.vision.num_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MultimodalConfig":
        require(isinstance(data, dict), "a multimodal config must be a mapping")
        require_known_fields(cls, data, "multimodal config")
        vision, projector = data.get("vision", {}), data.get("projector", {})
        require_known_fields(VisionConfig, vision, "multimodal config 'vision'")
        require_known_fields(ProjectorConfig, projector, "multimodal config 'projector'")
        config = cls(**{**data, "vision": VisionConfig(**vision), "projector": ProjectorConfig(**projector)})
        config.validate()
        return config


@dataclass
class MediaContext:
    """The projected media of the batch being run, (B, M, d), for cross-attention layers to read; None: none."""

    media: torch.Tensor | None = None


class MultimodalGPT(nn.Module):
    """The GPT, an image encoder and a projector; `context` is shared with any cross-attention layers."""

    def __init__(self, gpt: GPT, config: MultimodalConfig, context: MediaContext | None = None) -> None:
        super().__init__()
        config.validate()
        self.config, self.gpt = config, gpt
        self.context = context or MediaContext()
        self.vision = VisionEncoder(config.vision)
        self.projector = Projector(self.vision.out_dim, gpt.config.n_embd, config.projector)
        if config.frames > 1:
            self.temporal = nn.Parameter(torch.randn(config.frames, 1, self.vision.out_dim) * 0.02)

    def media_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images, or (B, frames, C, H, W) clips -> (B, M, n_embd) tokens in the GPT's embedding space."""
        frames = self.config.frames
        if frames == 1:
            require(images.dim() == 4, f"this model takes still images (B, C, H, W), got {tuple(images.shape)}")
            return self.projector(self.vision(images))
        require(images.dim() == 5 and images.shape[1] == frames,
                f"this model takes clips of {frames} frames (B, {frames}, C, H, W), got {tuple(images.shape)}")
        B = images.shape[0]
        features = self.vision(images.flatten(0, 1))  # every frame through the one image encoder
        features = (features.view(B, frames, *features.shape[1:]) + self.temporal).flatten(0, 1)
        tokens = self.projector(features)  # (B * frames, per-frame tokens, n_embd)
        return tokens.view(B, -1, tokens.shape[-1])  # the frames' tokens in time order

    def inputs_embeds(self, idx: torch.Tensor, media: torch.Tensor, media_mask: torch.Tensor) -> torch.Tensor:
        """Early fusion: token embeddings of `idx` with row i's True slots of `media_mask` holding media[i]."""
        require(media_mask.shape == idx.shape, f"media_mask {tuple(media_mask.shape)} must match the ids "
                                               f"{tuple(idx.shape)}")
        counts = media_mask.sum(dim=1)
        wanted = media.shape[1]
        bad = (counts != wanted).nonzero().flatten().tolist()
        if bad:
            raise GptkitError(f"row {bad[0]} has {int(counts[bad[0]])} media slots but an image gives {wanted} "
                              "tokens: the placeholders must match the media given")
        x = self.gpt.tok_emb(idx.masked_fill(media_mask, 0))
        return x.masked_scatter(media_mask.unsqueeze(-1), media.to(x.dtype))

    def hidden_states(self, idx: torch.Tensor, images: torch.Tensor | None = None,
                      media_mask: torch.Tensor | None = None) -> torch.Tensor:
        if images is None:  # text only: the GPT as it is (cross-attention layers stay out of the way)
            require(media_mask is None or not bool(media_mask.any()), "media slots given without images")
            return self.gpt.hidden_states(idx)
        require(images.shape[0] == idx.shape[0], f"{images.shape[0]} images for {idx.shape[0]} sequences")
        media = self.media_tokens(images)
        if self.config.fusion == "early":
            require(media_mask is not None, "early fusion needs media_mask: where the image's tokens go")
            return self.gpt.hidden_states(inputs_embeds=self.inputs_embeds(idx, media, media_mask))
        self.context.media = media
        try:
            return self.gpt.hidden_states(idx)
        finally:
            self.context.media = None

    def forward(self, idx: torch.Tensor, images: torch.Tensor | None = None,
                media_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, vocab)."""
        return self.gpt.lm_head(self.hidden_states(idx, images, media_mask))
