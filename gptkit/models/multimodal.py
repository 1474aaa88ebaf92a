"""A multimodal GPT by composition: an encoder and a projector feed the one GPT; no second language model.

    model = MultimodalGPT(gpt, MultimodalConfig(fusion="early", vision=VisionConfig(kind="cnn")))
    logits = model(idx, images, media_mask)   # media_mask True where an image's tokens go (early fusion)

The media, by `MultimodalConfig.modality`:
- "image": pixels (B, C, H, W) in [0, 1], through the image encoder (`gptkit.models.vision`);
- "video": clips (B, frames, C, H, W): every frame through the same image encoder, a learned temporal
  position embedding per frame, and each frame's tokens kept in time order;
- "audio": 16 kHz mono waveforms (B, samples), padded or cut to `clip_seconds`, so every clip gives the
  same number of tokens; Whisper's log-mel features are computed here (they have no weights) and go
  through the audio encoder (`gptkit.models.audio`).

Fusion, by `MultimodalConfig.fusion`:
- "early": the image's projected tokens replace placeholder slots of the input sequence (`media_mask`),
  so the GPT reads them as it reads word embeddings (`GPT.hidden_states(inputs_embeds=...)`).
- "cross": the sequence holds text only; gated cross-attention layers between the GPT's blocks read the
  image tokens (Flamingo). Those layers are added to a built GPT from outside
  (`gptkit.adapt.cross_attention`), and read the media of the running batch from a shared
  `MediaContext`, which this module fills for the length of a forward pass.
- "late": text and media are encoded apart — the GPT reads the text alone, the encoder the media alone —
  and meet only at a classification head over `config.labels` (`classify`): the last text token's hidden
  state and the media's projected tokens pooled by a learned query (attention pooling: a plain mean would
  throw away where things are), side by side, through LayerNorm and a linear layer.

Knows nothing of files, tokenizers or training: media come in as tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from gptkit.errors import GptkitError, require, require_known_fields
from gptkit.models.audio import FRAMES_PER_SECOND, SAMPLE_RATE, AudioConfig, AudioEncoder, log_mel_spectrogram
from gptkit.models.gpt import GPT
from gptkit.models.projector import Projector, ProjectorConfig
from gptkit.models.vision import VisionConfig, VisionEncoder

FUSIONS = ("early", "cross", "late")
MODALITIES = ("image", "video", "audio")


@dataclass
class MultimodalConfig:
    fusion: Literal["early", "cross", "late"] = "early"
    modality: Literal["image", "video", "audio"] = "image"
    vision: VisionConfig = field(default_factory=VisionConfig)
    """The image encoder (modality image and video)."""
    audio: AudioConfig = field(default_factory=lambda: AudioConfig(n_embd=64, n_layer=2, n_head=4))
    """The audio encoder (modality audio)."""
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    cross_every: int = 1
    """cross: a gated cross-attention layer after every this many GPT blocks (after the last block always)."""
    frames: int = 1
    """Video: frames per clip (2 or more; 1 for images). Each frame goes through the image encoder, gets a
    learned temporal position embedding, and keeps its own tokens, so the model can read motion across frames."""
    clip_seconds: float = 2.0
    """Audio: every clip is padded with silence or cut to this length (Whisper pads to 30 s)."""
    labels: list[str] = field(default_factory=list)
    """Late fusion: the classes of its head (the distinct answers it was trained on)."""

    def validate(self) -> None:
        require(self.fusion in FUSIONS, f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        require(self.modality in MODALITIES, f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        self.projector.validate()
        require(isinstance(self.cross_every, int) and self.cross_every >= 1,
                f"cross_every must be an integer >= 1, got {self.cross_every!r}")
        require(isinstance(self.frames, int) and self.frames >= 1, f"frames must be an integer >= 1, got {self.frames!r}")
        require((self.frames > 1) == (self.modality == "video"),
                f"a video has 2 or more frames and an image or audio clip 1; got {self.frames} for {self.modality}")
        if self.modality == "audio":
            self.audio.validate()
            require(0 < self.clip_seconds and self.clip_frames <= self.audio.max_frames,
                    f"clip_seconds must be in (0, {self.audio.max_frames / FRAMES_PER_SECOND:g}] (the encoder's "
                    f"max_frames), got {self.clip_seconds}")
        else:
            self.vision.validate()
            if self.projector.reduction != "none":
                require(self.vision.grid % self.projector.factor == 0,
                        f"the encoder's {self.vision.grid}x{self.vision.grid} grid cannot be reduced by "
                        f"{self.projector.factor}x{self.projector.factor} blocks")
        require(self.tokens_per_item >= 1, "the projector leaves no media tokens")
        require((self.fusion == "late") == (len(self.labels) > 0) and len(self.labels) != 1,
                f"late fusion needs 2 or more labels (its classes), and only late fusion has labels; got "
                f"{len(self.labels)} for {self.fusion} fusion")

    @property
    def clip_samples(self) -> int:
        """Audio: samples of one clip at 16 kHz."""
        return round(self.clip_seconds * SAMPLE_RATE)

    @property
    def clip_frames(self) -> int:
        """Audio: log-mel frames of one clip (100 a second)."""
        return self.clip_samples // (SAMPLE_RATE // FRAMES_PER_SECOND)

    @property
    def layout(self) -> Literal["grid", "sequence"]:
        return "sequence" if self.modality == "audio" else "grid"

    @property
    def encoder_tokens(self) -> int:
        """Feature vectors the encoder gives for one image, frame or clip."""
        if self.modality == "audio":
            return (self.clip_frames + 1) // 2  # the stride-2 conv
        return self.vision.num_tokens

    @property
    def tokens_per_item(self) -> int:
        return self.projector.tokens_out(self.encoder_tokens, self.layout)

    @property
    def media_tokens(self) -> int:
        """Tokens one image, clip of `frames` frames, or audio clip becomes in the language model's input."""
        return self.frames * self.tokens_per_item

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MultimodalConfig":
        require(isinstance(data, dict), "a multimodal config must be a mapping")
        require_known_fields(cls, data, "multimodal config")
        vision, projector = data.get("vision", {}), data.get("projector", {})
        require_known_fields(VisionConfig, vision, "multimodal config 'vision'")
        require_known_fields(ProjectorConfig, projector, "multimodal config 'projector'")
        parts = {"vision": VisionConfig(**vision), "projector": ProjectorConfig(**projector)}
        if "audio" in data:
            parts["audio"] = AudioConfig.from_dict(data["audio"])
        if "modality" not in data and data.get("frames", 1) > 1:  # written before modality was recorded
            parts["modality"] = "video"
        config = cls(**{**data, **parts})
        config.validate()
        return config


@dataclass
class MediaContext:
    """The projected media of the batch being run, (B, M, d), for cross-attention layers to read; None: none."""

    media: torch.Tensor | None = None


class MultimodalGPT(nn.Module):
    """The GPT, an image or audio encoder and a projector; `context` is shared with any cross-attention layers."""

    def __init__(self, gpt: GPT, config: MultimodalConfig, context: MediaContext | None = None) -> None:
        super().__init__()
        config.validate()
        self.config, self.gpt = config, gpt
        self.context = context or MediaContext()
        if config.modality == "audio":
            self.audio = AudioEncoder(config.audio)
            width = self.audio.out_dim
        else:
            self.vision = VisionEncoder(config.vision)
            width = self.vision.out_dim
        self.projector = Projector(width, gpt.config.n_embd, config.projector, layout=config.layout)
        if config.frames > 1:
            self.temporal = nn.Parameter(torch.randn(config.frames, 1, width) * 0.02)
        if config.fusion == "late":
            d = gpt.config.n_embd
            self.pool_query = nn.Parameter(torch.zeros(d))  # starts as a plain mean; learns what to look at
            self.head = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, len(config.labels)))

    def media_tokens(self, media: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images, (B, frames, C, H, W) clips or (B, samples) audio -> (B, M, n_embd) tokens in the
        GPT's embedding space."""
        if self.config.modality == "audio":
            return self.audio_tokens(media)
        images, frames = media, self.config.frames
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

    def audio_tokens(self, audio: torch.Tensor) -> torch.Tensor:
        samples = self.config.clip_samples
        require(audio.dim() == 2 and audio.shape[1] == samples,
                f"this model takes audio clips of {samples} samples ({self.config.clip_seconds:g} s at 16 kHz), "
                f"shaped (B, {samples}); got {tuple(audio.shape)}")
        mel = log_mel_spectrogram(audio.float(), self.config.audio.n_mels)
        return self.projector(self.audio(mel.to(self.projector.mlp[0].weight.dtype)))

    def inputs_embeds(self, idx: torch.Tensor, media: torch.Tensor, media_mask: torch.Tensor) -> torch.Tensor:
        """Early fusion: token embeddings of `idx` with row i's True slots of `media_mask` holding media[i]."""
        require(media_mask.shape == idx.shape, f"media_mask {tuple(media_mask.shape)} must match the ids "
                                               f"{tuple(idx.shape)}")
        counts = media_mask.sum(dim=1)
        wanted = media.shape[1]
        bad = (counts != wanted).nonzero().flatten().tolist()
        if bad:
            raise GptkitError(f"row {bad[0]} has {int(counts[bad[0]])} media slots but its {self.config.modality} "
                              f"gives {wanted} tokens: the placeholders must match the media given")
        x = self.gpt.tok_emb(idx.masked_fill(media_mask, 0))
        return x.masked_scatter(media_mask.unsqueeze(-1), media.to(x.dtype))

    def hidden_states(self, idx: torch.Tensor, media: torch.Tensor | None = None,
                      media_mask: torch.Tensor | None = None) -> torch.Tensor:
        if media is None:  # text only: the GPT as it is (cross-attention layers stay out of the way)
            require(media_mask is None or not bool(media_mask.any()), "media slots given without media")
            return self.gpt.hidden_states(idx)
        require(media.shape[0] == idx.shape[0], f"{media.shape[0]} media items for {idx.shape[0]} sequences")
        media = self.media_tokens(media)
        if self.config.fusion == "early":
            require(media_mask is not None, "early fusion needs media_mask: where the image's tokens go")
            return self.gpt.hidden_states(inputs_embeds=self.inputs_embeds(idx, media, media_mask))
        self.context.media = media
        try:
            return self.gpt.hidden_states(idx)
        finally:
            self.context.media = None

    def forward(self, idx: torch.Tensor, media: torch.Tensor | None = None,
                media_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, vocab). Late fusion: label logits (`classify`), the third argument then being
        the texts' lengths (so that a wrapped model, DDP's say, trains through its forward either way)."""
        if self.config.fusion == "late":
            require(media is not None and media_mask is not None, "late fusion takes (idx, media, lengths)")
            return self.classify(idx, media_mask, media)
        return self.gpt.lm_head(self.hidden_states(idx, media, media_mask))

    def classify(self, idx: torch.Tensor, lengths: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """Late fusion: label logits (B, len(config.labels)) for right-padded text ids (B, T) with real `lengths`
        (B,) and their media, each encoded apart."""
        require(self.config.fusion == "late", f"classify() is late fusion's; this model fuses {self.config.fusion}")
        require(media.shape[0] == idx.shape[0], f"{media.shape[0]} media items for {idx.shape[0]} texts")
        hidden = self.gpt.hidden_states(idx)
        text = hidden[torch.arange(idx.shape[0], device=idx.device), lengths - 1]  # the last real token's state
        tokens = self.media_tokens(media)  # (B, M, d)
        weights = (tokens @ self.pool_query / tokens.shape[-1] ** 0.5).softmax(dim=1)  # (B, M)
        pooled = (weights.unsqueeze(-1) * tokens).sum(dim=1)
        return self.head(torch.cat([text, pooled], dim=-1))
