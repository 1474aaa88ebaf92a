"""Audio files and uploads to float32 mono samples at 16 kHz (read, downmix, resample); knows nothing of log-mels or models.

    from gptkit.data.audio import bundled_audio, decode_audio_bytes, read_audio
    samples = read_audio(bundled_audio("symbols_math_7_en_GB"))    # np.float32, shape (samples,), 16 kHz, in [-1, 1]
    samples = decode_audio_bytes(base64.b64decode(part), what="audio content part 2")

Formats are whatever libsndfile (through `soundfile`, whose wheel bundles it) reads: WAV, FLAC, OGG Vorbis/Opus,
MP3, AIFF and others. Every clip comes back the same way:
- **mono**: several channels are averaged (the mean, not the sum, so a clip recorded identically on both channels
  keeps its level; channels in opposite phase cancel, which is also what a mono speaker would play);
- **resampled** to `sample_rate` (16 kHz, what Whisper-style encoders expect) with a polyphase anti-aliasing
  filter (`scipy.signal.resample_poly`) when scipy is installed, else with an FFT (band-limited, numpy only:
  correct in the middle, it may ring slightly at the clip's edges because it treats the clip as periodic);
- **float32 in [-1, 1]**: integer PCM is scaled by libsndfile; float files (and resampling overshoot) are
  clipped to [-1, 1].
An unreadable input (missing, empty, corrupt, unsupported, no samples, non-finite samples, longer than
`max_seconds`) is a `GptkitError` that names the file (or `what` for uploads) and the problem.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from gptkit.errors import GptkitError, require

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0
AUDIO_DIR = Path(__file__).resolve().parent / "audio"
"""Bundled clips (10 spoken digits, 2 spoken captions); see PROVENANCE.md there for source and licence."""
AUDIO_SUFFIXES = (".ogg", ".wav", ".flac")


def bundled_audio_names() -> list[str]:
    """Names (file stems) of the bundled clips, sorted."""
    return sorted(p.stem for p in AUDIO_DIR.iterdir() if p.suffix in AUDIO_SUFFIXES)


def bundled_audio(name: str) -> Path:
    """Path of the bundled clip `name` (a file stem such as "symbols_math_0_en_GB")."""
    for suffix in AUDIO_SUFFIXES:
        if (AUDIO_DIR / f"{name}{suffix}").is_file():
            return AUDIO_DIR / f"{name}{suffix}"
    raise GptkitError(f"no bundled audio clip named {name!r}; available: {', '.join(bundled_audio_names())}")


def read_audio(path: str | Path, *, sample_rate: int = SAMPLE_RATE, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Read an audio file as float32 mono samples at `sample_rate` in [-1, 1], shape (samples,)."""
    path = Path(path)
    what = f"audio file {path}"
    require(path.exists(), f"{what} does not exist")
    require(path.is_file(), f"{what} is not a file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise GptkitError(f"{what} cannot be read: {err.strerror or err}") from None
    require(size > 0, f"{what} is empty (0 bytes)")
    return _decode(path, what, sample_rate, max_seconds)


def decode_audio_bytes(data: bytes, *, what: str, sample_rate: int = SAMPLE_RATE,
                       max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Decode the bytes of an audio file (e.g. a base64-decoded upload) like `read_audio`; `what` names it in errors."""
    require(isinstance(data, (bytes, bytearray, memoryview)), f"{what}: expected bytes, got {type(data).__name__}")
    require(len(data) > 0, f"{what} is empty (0 bytes)")
    return _decode(io.BytesIO(bytes(data)), what, sample_rate, max_seconds)


def resample(audio: np.ndarray, from_rate: int, to_rate: int, *, method: str = "auto") -> np.ndarray:
    """Resample 1-D `audio` from `from_rate` to `to_rate` Hz; method "poly" (scipy), "fft" (numpy) or "auto"."""
    require(method in ("auto", "poly", "fft"), f"resample: method must be 'auto', 'poly' or 'fft', got {method!r}")
    require(from_rate > 0 and to_rate > 0, f"resample: sample rates must be positive, got {from_rate} and {to_rate}")
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate == to_rate:
        return audio
    if method in ("auto", "poly"):
        try:
            # Optional: scipy comes with scikit-learn; its polyphase filter has no edge artefacts.
            from scipy.signal import resample_poly
        except ImportError:
            require(method == "auto", "resample: method='poly' needs scipy (pip install scipy)")
        else:
            g = math.gcd(from_rate, to_rate)
            return resample_poly(audio, to_rate // g, from_rate // g).astype(np.float32)
    # Band-limited resampling by the FFT: keep (or zero-pad) the spectrum up to the new Nyquist frequency.
    n_out = max(1, round(len(audio) * to_rate / from_rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    return (np.fft.irfft(spectrum, n_out) * (n_out / len(audio))).astype(np.float32)


def _decode(source: Any, what: str, sample_rate: int, max_seconds: float) -> np.ndarray:
    require(sample_rate > 0, f"{what}: sample_rate must be positive, got {sample_rate}")
    require(max_seconds > 0, f"{what}: max_seconds must be positive, got {max_seconds}")
    try:
        with sf.SoundFile(source) as f:
            rate, frames = f.samplerate, f.frames
            # Refuse a long clip from its header before decoding it (the decoded length is checked again below).
            _require_short(frames / rate if rate > 0 else 0.0, what, max_seconds)
            samples = f.read(dtype="float32", always_2d=True)
    except sf.SoundFileError as err:
        message = getattr(err, "error_string", "") or str(err)
        raise GptkitError(f"{what} cannot be decoded as audio ({message}); "
                          "expected a WAV, FLAC, OGG (Vorbis/Opus) or MP3 file") from None
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise GptkitError(f"{what} cannot be read as audio: {err}") from None
    require(rate > 0, f"{what} has an invalid sample rate ({rate} Hz)")
    require(samples.shape[0] > 0, f"{what} contains no audio samples")
    _require_short(samples.shape[0] / rate, what, max_seconds)
    require(bool(np.isfinite(samples).all()), f"{what} contains non-finite samples (NaN or infinity)")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    mono = resample(mono, rate, sample_rate)
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def _require_short(seconds: float, what: str, max_seconds: float) -> None:
    require(seconds <= max_seconds,
            f"{what} is {seconds:.2f} s long, longer than the limit of {max_seconds:g} s (max_seconds); "
            "cut it into shorter clips")


def augment_clips(clips: torch.Tensor, generator: torch.Generator, *, max_shift_seconds: float = 0.15,
                  gain_db: float = 6.0, snr_db: tuple[float, float] = (15.0, 40.0)) -> torch.Tensor:
    """Training-time variants of a batch of clips (B, samples): each shifted in time by up to
    `max_shift_seconds` (the gap filled with silence), louder or quieter by up to `gain_db`, and with white
    noise at a signal-to-noise ratio drawn from `snr_db`. Every draw comes from `generator`, so a batch is
    the same again when the generator is (what exact resumption needs)."""
    B, n = clips.shape
    limit = int(max_shift_seconds * SAMPLE_RATE)
    shifts = torch.randint(-limit, limit + 1, (B,), generator=generator).tolist()
    shifted = torch.zeros_like(clips)
    for row, shift in enumerate(shifts):
        if shift >= 0:
            shifted[row, shift:] = clips[row, : n - shift]
        else:
            shifted[row, :shift] = clips[row, -shift:]
    gain = 10 ** ((torch.rand(B, 1, generator=generator) * 2 - 1) * gain_db / 20)
    snr = snr_db[0] + torch.rand(B, 1, generator=generator) * (snr_db[1] - snr_db[0])
    power = shifted.pow(2).mean(dim=1, keepdim=True).clamp(min=1e-10)
    noise = torch.randn(B, n, generator=generator) * (power / 10 ** (snr / 10)).sqrt()
    return ((shifted + noise) * gain).clamp(-1.0, 1.0)
