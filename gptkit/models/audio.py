"""The audio encoder: Whisper's log-mel spectrogram and a conv + Transformer encoder to (B, N, d); knows nothing of files or the LM.

    mel = log_mel_spectrogram(torch.from_numpy(samples))   # (1, 80, samples // 160), 100 frames a second
    encoder = AudioEncoder(AudioConfig(n_embd=256, n_layer=4, n_head=4))
    features = encoder(mel)                                 # (1, ceil(frames / 2), 256), 50 vectors a second

The spectrogram follows OpenAI Whisper's `log_mel_spectrogram` exactly (16 kHz, 25 ms Hann window, 10 ms hop,
Slaney mel filterbank, log10 with an 8-decade dynamic range, scaled to roughly [-1, 1]), with one difference:
the dynamic range is taken per clip (per row of a batch), where Whisper sees one clip at a time. The encoder is
Whisper's encoder in miniature: two Conv1d (the second with stride 2), sinusoidal positions, pre-norm blocks of
bidirectional self-attention and a 4x GELU MLP, a final LayerNorm.

Clips in a batch are right-padded to the same number of frames; pass `lengths` (real frames per clip) and the
padding is masked out exactly: every real position's output equals that of the clip encoded alone, and padded
positions come out as zeros. Without `lengths` every frame counts (pad with silence, as Whisper does).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.errors import GptkitError, require, require_known_fields
from gptkit.models.encoder import EncoderBlock

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop: 100 frames a second
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 1000.0 / (200.0 / 3), math.log(6.4) / 27.0
    return torch.where(hz >= min_log_hz, min_log_mel + torch.log(hz.clamp(min=1e-10) / min_log_hz) / logstep, hz / f_sp)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of `hz_to_mel`."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 1000.0 / (200.0 / 3), math.log(6.4) / 27.0
    return torch.where(mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), mel * f_sp)


@lru_cache(maxsize=8)
def _mel_filters(n_mels: int) -> torch.Tensor:
    # librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels): triangles between mel-spaced edges over 0..8000 Hz,
    # each scaled by 2 / (f_hi - f_lo) so that every filter has the same area ("slaney" norm). float64, then float32.
    fft_freqs = torch.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(0.0, float(hz_to_mel(torch.tensor(SAMPLE_RATE / 2.0))), n_mels + 2,
                                     dtype=torch.float64))
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs - lo) / (centre - lo)
    falling = (hi - fft_freqs) / (hi - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0) * (2.0 / (hi - lo))
    return weights.to(torch.float32)


def mel_filterbank(n_mels: int = 80) -> torch.Tensor:
    """The (n_mels, 201) Slaney mel filterbank for 16 kHz and n_fft=400 (a copy; the cached one stays untouched)."""
    require(n_mels > 0, f"mel filterbank: n_mels must be positive, got {n_mels}")
    return _mel_filters(n_mels).clone()


def log_mel_spectrogram(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel features of 16 kHz audio (B, samples) or (samples,) -> (B, n_mels, samples // 160)."""
    require(isinstance(audio, torch.Tensor), f"log-mel: expected a torch.Tensor, got {type(audio).__name__}")
    require(audio.dim() in (1, 2), f"log-mel: expected audio of shape (samples,) or (B, samples), got {tuple(audio.shape)}")
    audio = audio.float().reshape(-1, audio.shape[-1])
    # center=True reflect-pads n_fft // 2 samples on each side, which needs more samples than that.
    require(audio.shape[-1] > N_FFT // 2,
            f"log-mel: audio has {audio.shape[-1]} samples; at least {N_FFT // 2 + 1} "
            f"({(N_FFT // 2 + 1) / SAMPLE_RATE * 1000:.1f} ms at 16 kHz) are needed")
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, center=True, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # Whisper drops the last frame: samples // 160 frames remain
    mel = _mel_filters(n_mels).to(audio.device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal position table (length, channels): sines in the first half, cosines in the second."""
    inv_timescales = torch.exp(-math.log(max_timescale) / (channels // 2 - 1) * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


@dataclass
class AudioConfig:
    """Shape of the audio encoder."""

    n_mels: int = 80
    """Mel bands of the input (Whisper: 80; large-v3: 128)."""
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    max_frames: int = 3000
    """Most mel frames a clip may have: 3000 = 30 s at 100 frames a second (the encoder sees half as many)."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("n_mels", "n_embd", "n_layer", "n_head", "max_frames"):
            require(getattr(self, name) > 0, f"audio config: {name} must be positive, got {getattr(self, name)}")
        require(self.n_embd % self.n_head == 0,
                f"audio config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        # The sinusoid table splits n_embd into sine and cosine halves of at least two timescales each.
        require(self.n_embd % 2 == 0 and self.n_embd >= 4, f"audio config: n_embd must be even and >= 4, got {self.n_embd}")
        require(0.0 <= self.dropout < 1.0, f"audio config: dropout must be in [0, 1), got {self.dropout}")

    @property
    def max_positions(self) -> int:
        return (self.max_frames + 1) // 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioConfig:
        require_known_fields(cls, data, "audio config")
        return cls(**data)


class AudioEncoder(nn.Module):
    """Log-mel frames (B, n_mels, frames) -> features (B, ceil(frames / 2), n_embd)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.out_dim = config.n_embd
        self.conv1 = nn.Conv1d(config.n_mels, config.n_embd, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.n_embd, config.n_embd, kernel_size=3, stride=2, padding=1)
        # Fixed sinusoids as in Whisper's encoder: derived from the config, so not saved in checkpoints.
        self.register_buffer("positions", sinusoids(config.max_positions, config.n_embd), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(config.n_embd, config.n_head, config.dropout)
                                    for _ in range(config.n_layer))
        self.ln_post = nn.LayerNorm(config.n_embd)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the projections into the residual stream
            if name.endswith(("attn.c_proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)

    @staticmethod
    def encoded_lengths(frame_lengths: torch.Tensor) -> torch.Tensor:
        """Output positions for clips of `frame_lengths` mel frames: ceil(frames / 2) (the stride-2 conv)."""
        return (frame_lengths + 1) // 2

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Encode `mel` (B, n_mels, frames); `lengths` (B,) = real frames per clip when the batch is right-padded."""
        config = self.config
        require(mel.dim() == 3, f"audio encoder: expected mel of shape (B, n_mels, frames), got {tuple(mel.shape)}")
        B, n_mels, frames = mel.shape
        require(n_mels == config.n_mels,
                f"audio encoder: mel has {n_mels} bands but the encoder was built for n_mels={config.n_mels}")
        require(frames > 0, "audio encoder: mel has 0 frames")
        if frames > config.max_frames:
            raise GptkitError(
                f"audio encoder: mel has {frames} frames ({frames / FRAMES_PER_SECOND:.2f} s) but the encoder takes at "
                f"most max_frames={config.max_frames} ({config.max_frames / FRAMES_PER_SECOND:.2f} s); cut the clip")
        mask = keep_in = keep_out = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=mel.device)
            require(lengths.shape == (B,), f"audio encoder: lengths must have shape ({B},), got {tuple(lengths.shape)}")
            require(bool(((lengths >= 1) & (lengths <= frames)).all()),
                    f"audio encoder: lengths must be in 1..{frames} (the padded frames), got {lengths.tolist()}")
            # Zero the padding before each conv, as the conv's own zero padding is at the end of an unpadded clip.
            keep_in = (torch.arange(frames, device=mel.device) < lengths[:, None])[:, None, :]  # (B, 1, frames)
            n_out = (frames + 1) // 2
            keep_out = torch.arange(n_out, device=mel.device) < self.encoded_lengths(lengths)[:, None]  # (B, N)
            mask = keep_out[:, None, None, :]  # (B, 1, 1, N): which keys each query may attend to
            mel = mel * keep_in
        x = F.gelu(self.conv1(mel))
        if keep_in is not None:
            x = x * keep_in
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, N, n_embd)
        x = self.drop(x + self.positions[: x.shape[1]].to(x.dtype))
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_post(x)
        return x if keep_out is None else x * keep_out[..., None]
