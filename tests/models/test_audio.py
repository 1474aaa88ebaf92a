"""Audio in: reading files (gptkit.data.audio), Whisper's log-mel and the audio encoder (gptkit.models.audio)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from gptkit.data.audio import (
    AUDIO_DIR,
    bundled_audio,
    bundled_audio_names,
    decode_audio_bytes,
    read_audio,
    resample,
)
from gptkit.errors import GptkitError
from gptkit.models.audio import AudioConfig, AudioEncoder, log_mel_spectrogram, mel_filterbank

DIGITS = [f"symbols_math_{d}_en_GB" for d in range(10)]
CAPTIONS = ["animals_amphibians_frog", "animals_mammals_bovines_cow"]


def slaney_hz_to_mel(hz):
    """Slaney's Auditory Toolbox scale, written out independently: 3 mels per 200 Hz to 1 kHz, then log steps."""
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz < 1000, hz * 3 / 200, 15 + np.log(np.maximum(hz, 1e-10) / 1000) * 27 / np.log(6.4))


def slaney_mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel < 15, mel * 200 / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))


def band_edges(n_mels=80):
    return slaney_mel_to_hz(np.linspace(0, slaney_hz_to_mel(8000.0), n_mels + 2))


def tone(freq, seconds=1.0, rate=16000, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, rate=16000):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


# --- the mel filterbank and the log-mel -------------------------------------------------------------


def test_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    for n_mels in (80, 128):
        reference = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)
        np.testing.assert_allclose(mel_filterbank(n_mels).numpy(), reference, atol=1e-5, rtol=0)


def test_filterbank_peaks_at_mel_spaced_centres_with_slaney_area_norm():
    fb = mel_filterbank(80).numpy().astype(np.float64)
    assert fb.shape == (80, 201) and (fb >= 0).all()
    edges = band_edges(80)
    lo, centre, hi = edges[:-2], edges[1:-1], edges[2:]
    bin_hz = 16000 / 400
    for i in range(80):
        row = fb[i]
        assert row.max() > 0, f"band {i} is empty"
        # The peak sits within one FFT bin (40 Hz) of the mel-spaced centre; nothing outside (lo, hi).
        assert abs(np.argmax(row) * bin_hz - centre[i]) <= bin_hz, i
        freqs = np.arange(201) * bin_hz
        assert (row[(freqs <= lo[i]) | (freqs >= hi[i])] < 1e-6).all(), i  # (float rounding at 8 kHz)
        # Slaney norm: the triangle's height is 2 / (f_hi - f_lo), so each filter has unit area in Hz.
        assert row.max() <= 2 / (hi[i] - lo[i]) + 1e-7, i
        # Some bin lies within 20 Hz of the apex, so the sampled peak is at least 1 - 20 / (shorter slope) of it.
        shortest_slope = min(centre[i] - lo[i], hi[i] - centre[i])
        if shortest_slope > bin_hz:
            assert row.max() * (hi[i] - lo[i]) / 2 >= 1 - (bin_hz / 2) / shortest_slope - 1e-6, i
        if hi[i] - lo[i] >= 10 * bin_hz:  # wide enough for the sampled triangle's area to be close to 1
            assert row.sum() * bin_hz == pytest.approx(1.0, rel=0.03), i
    assert hi[-1] == pytest.approx(8000.0) and lo[0] == 0.0
    # The filterbank is cached: a caller editing its copy must not change the next spectrogram.
    mel_filterbank(80).zero_()
    assert mel_filterbank(80).sum() > 0


@pytest.mark.parametrize("samples", [201, 400, 16000, 16159, 16160, 16161, 48000])
def test_frame_count_is_samples_over_hop(samples):
    audio = torch.randn(samples) * 0.1
    assert log_mel_spectrogram(audio).shape == (1, 80, samples // 160)


def test_too_short_audio_is_a_clear_error():
    with pytest.raises(GptkitError, match="200 samples; at least 201"):
        log_mel_spectrogram(torch.zeros(200))


def numpy_log_mel(x: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Whisper's recipe in numpy: reflect-pad 200, periodic Hann 400, hop 160, rfft, drop the last frame."""
    padded = np.pad(x.astype(np.float64), 200, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    n_frames = 1 + (len(padded) - 400) // 160
    frames = np.stack([padded[i * 160: i * 160 + 400] * window for i in range(n_frames)], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=0)) ** 2
    log_spec = np.log10(np.maximum(filters @ power[:, :-1], 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


@pytest.mark.parametrize("name", ["symbols_math_3_en_GB", "animals_amphibians_frog"])
def test_log_mel_matches_an_independent_numpy_stft(name):
    x = read_audio(bundled_audio(name))
    ours = log_mel_spectrogram(torch.from_numpy(x))[0].numpy()
    filters = mel_filterbank(80).numpy().astype(np.float64)
    np.testing.assert_allclose(ours, numpy_log_mel(x, filters), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["symbols_math_3_en_GB", "animals_amphibians_frog"])
def test_log_mel_matches_librosa(name):
    librosa = pytest.importorskip("librosa")
    x = read_audio(bundled_audio(name))
    ours = log_mel_spectrogram(torch.from_numpy(x))[0].numpy()
    power = np.abs(librosa.stft(x.astype(np.float64), n_fft=400, hop_length=160, window="hann",
                                pad_mode="reflect")) ** 2  # Whisper's torch.stft pads by reflection
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80).astype(np.float64) @ power[:, :-1]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    np.testing.assert_allclose(ours, (np.maximum(log_spec, log_spec.max() - 8) + 4) / 4, atol=1e-4, rtol=0)


@pytest.mark.parametrize("freq", [1000.0, 3000.0])
def test_a_pure_tone_lights_the_mel_band_that_contains_it(freq):
    mel = log_mel_spectrogram(torch.from_numpy(tone(freq)))[0]  # (80, 100)
    edges = band_edges(80)
    expected = int(np.argmin(np.abs(edges[1:-1] - freq)))  # the band whose centre is nearest the tone
    assert int(mel.mean(dim=1).argmax()) == expected
    assert edges[expected] < freq < edges[expected + 2]
    # Far bands sit at the floor of the 8-decade range: 2.0 below the top after the (x + 4) / 4 scaling.
    assert float(mel.max() - mel.min()) == pytest.approx(2.0, abs=1e-5)


def test_dynamic_range_is_per_clip_in_a_batch():
    x = torch.from_numpy(read_audio(bundled_audio("symbols_math_5_en_GB")))
    y = torch.from_numpy(read_audio(bundled_audio("symbols_math_6_en_GB")))[: len(x)]
    y = torch.nn.functional.pad(y, (0, len(x) - len(y))) * 0.01
    batch = log_mel_spectrogram(torch.stack([x, y]))
    torch.testing.assert_close(batch[0], log_mel_spectrogram(x)[0])
    torch.testing.assert_close(batch[1], log_mel_spectrogram(y)[0])


# --- reading audio -----------------------------------------------------------------------------------


def test_bundled_clips_are_all_there_and_small():
    assert bundled_audio_names() == sorted(CAPTIONS + DIGITS)
    assert sum(p.stat().st_size for p in AUDIO_DIR.iterdir()) < 200_000
    assert (AUDIO_DIR / "PROVENANCE.md").read_text().count("GPL-2") >= 1
    with pytest.raises(GptkitError, match="available: animals_amphibians_frog"):
        bundled_audio("symbols_math_10_en_GB")


@pytest.mark.parametrize("name", DIGITS + CAPTIONS)
def test_bundled_ogg_and_wav_read_as_16k_mono_float32(name):
    path = bundled_audio(name)
    x = read_audio(path)
    info = sf.info(str(path))
    assert info.samplerate == 16000 and info.channels == 1
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == info.frames
    assert np.abs(x).max() <= 1.0 and np.sqrt(np.mean(x**2)) > 0.01  # in range and not silence
    np.testing.assert_array_equal(x, decode_audio_bytes(path.read_bytes(), what=name))


def test_stereo_44k_is_downmixed_and_resampled(tmp_path):
    rate, seconds = 44100, 1.5
    left, right = tone(440.0, seconds, rate, amplitude=0.6), tone(440.0, seconds, rate, amplitude=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), rate, subtype="FLOAT")
    x = read_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == round(len(left) * 16000 / rate)
    assert peak_hz(x) == pytest.approx(440.0, abs=16000 / len(x))
    middle = x[2000:-2000]  # the mean of the channels (0.4), not their sum (0.8)
    assert np.abs(middle).max() == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize("method", ["poly", "fft"])
def test_resampling_keeps_a_tone_and_removes_what_cannot_be_represented(method):
    if method == "poly":
        pytest.importorskip("scipy")
    kept = resample(tone(1234.0, 1.0, 44100), 44100, 16000, method=method)
    assert len(kept) == 16000 and peak_hz(kept) == pytest.approx(1234.0, abs=1.0)
    assert np.sqrt(np.mean(kept[1000:-1000] ** 2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.02)
    # 10 kHz is above the new Nyquist frequency (8 kHz): a correct resampler filters it out; linear
    # interpolation would fold it down to 6 kHz at nearly full level.
    folded = resample(tone(10000.0, 1.0, 44100), 44100, 16000, method=method)
    assert np.sqrt(np.mean(folded[1000:-1000] ** 2)) < 0.01
    up = resample(tone(440.0, 1.0, 8000), 8000, 16000, method=method)
    assert len(up) == 16000 and peak_hz(up) == pytest.approx(440.0, abs=1.0)


def test_bad_files_are_errors_that_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(GptkitError, match=r"corrupt\.wav cannot be decoded as audio"):
        read_audio(corrupt)
    with pytest.raises(GptkitError, match=r"missing\.ogg does not exist"):
        read_audio(tmp_path / "missing.ogg")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(GptkitError, match=r"empty\.wav is empty"):
        read_audio(empty)
    truncated = tmp_path / "truncated.ogg"
    truncated.write_bytes(bundled_audio("symbols_math_0_en_GB").read_bytes()[:3000])
    with pytest.raises(GptkitError, match=r"truncated\.ogg cannot be decoded"):
        read_audio(truncated)
    no_samples = tmp_path / "no_samples.wav"
    sf.write(str(no_samples), np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(GptkitError, match=r"no_samples\.wav contains no audio samples"):
        read_audio(no_samples)
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(GptkitError, match=r"nan\.wav contains non-finite samples"):
        read_audio(nan)
    with pytest.raises(GptkitError, match=r"is not a file"):
        read_audio(tmp_path)


def test_uploads_that_are_not_audio_are_errors_naming_what():
    with pytest.raises(GptkitError, match="content part 3 cannot be decoded as audio"):
        decode_audio_bytes(os.urandom(2048), what="content part 3")
    with pytest.raises(GptkitError, match="content part 4 is empty"):
        decode_audio_bytes(b"", what="content part 4")


def test_a_clip_longer_than_max_seconds_is_an_error_with_both_lengths(tmp_path):
    with pytest.raises(GptkitError, match=r"0\.91 s long, longer than the limit of 0\.5 s"):
        read_audio(bundled_audio("symbols_math_0_en_GB"), max_seconds=0.5)
    long = tmp_path / "long.flac"
    sf.write(str(long), np.zeros(31 * 8000, dtype=np.float32), 8000)
    with pytest.raises(GptkitError, match=r"long\.flac is 31\.00 s long, longer than the limit of 30 s"):
        read_audio(long)


# --- the encoder ---------------------------------------------------------------------------------------


def small_encoder(**overrides) -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(AudioConfig(**{"n_embd": 64, "n_layer": 2, "n_head": 4, **overrides})).eval()


def digit_mel(d: int) -> torch.Tensor:
    return log_mel_spectrogram(torch.from_numpy(read_audio(bundled_audio(DIGITS[d]))))


def test_encoder_output_shape_on_a_real_clip():
    encoder = small_encoder()
    for d in (0, 1):  # 14489 samples -> 90 frames -> 45; 7616 -> 47 frames (odd) -> 24
        mel = digit_mel(d)
        with torch.no_grad():
            out = encoder(mel)
        assert out.shape == (1, math.ceil(mel.shape[-1] / 2), 64) and encoder.out_dim == 64
        assert torch.isfinite(out).all()
    assert digit_mel(0).shape[-1] == 14489 // 160 and digit_mel(1).shape[-1] == 7616 // 160


def test_different_digits_encode_differently_and_the_same_one_identically():
    encoder = small_encoder()
    frames = min(digit_mel(3).shape[-1], digit_mel(8).shape[-1])
    with torch.no_grad():
        three, eight = encoder(digit_mel(3)[..., :frames]), encoder(digit_mel(8)[..., :frames])
        again = encoder(digit_mel(3)[..., :frames])
        nudged = encoder(digit_mel(3)[..., :frames] + 1e-3 * torch.randn(1, 80, frames))
    torch.testing.assert_close(three, again)
    # Untrained, the output is mostly positions and biases; still, the content moves it far more than noise does.
    assert (three - eight).abs().mean() > 50 * (three - nudged).abs().mean()


def test_padding_mask_makes_a_padded_batch_equal_to_clips_alone():
    encoder = small_encoder()
    mels = [digit_mel(d) for d in (0, 1, 2)]  # 90, 47 and 49 frames
    frames = max(m.shape[-1] for m in mels)
    batch = torch.cat([torch.nn.functional.pad(m, (0, frames - m.shape[-1]), value=3.0) for m in mels])
    lengths = torch.tensor([m.shape[-1] for m in mels])
    with torch.no_grad():
        out = encoder(batch, lengths)
        n = AudioEncoder.encoded_lengths(lengths)
        for i, m in enumerate(mels):
            torch.testing.assert_close(out[i, : n[i]], encoder(m)[0], atol=1e-5, rtol=1e-4)
            assert (out[i, n[i]:] == 0).all()
        unmasked = encoder(batch)
    assert not torch.allclose(unmasked[1, : n[1]], out[1, : n[1]], atol=1e-3)  # the mask is what made them equal


def test_encoder_shape_errors_name_both_numbers():
    encoder = small_encoder(max_frames=100)
    with pytest.raises(GptkitError, match=r"101 frames \(1\.01 s\).*max_frames=100"):
        encoder(torch.zeros(1, 80, 101))
    with pytest.raises(GptkitError, match="mel has 128 bands but the encoder was built for n_mels=80"):
        encoder(torch.zeros(1, 128, 50))
    with pytest.raises(GptkitError, match=r"shape \(B, n_mels, frames\), got \(80, 50\)"):
        encoder(torch.zeros(80, 50))
    with pytest.raises(GptkitError, match=r"lengths must be in 1\.\.50"):
        encoder(torch.zeros(2, 80, 50), torch.tensor([50, 51]))
    encoder(torch.zeros(1, 80, 100))  # exactly max_frames is fine


def test_audio_config_validation():
    with pytest.raises(GptkitError, match=r"n_embd \(66\) must be divisible by n_head \(4\)"):
        AudioConfig(n_embd=66, n_head=4)
    with pytest.raises(GptkitError, match="max_frames must be positive"):
        AudioConfig(max_frames=0)
    with pytest.raises(GptkitError, match="unknown field"):
        AudioConfig.from_dict({"n_embd": 64, "n_mel": 80})
    config = AudioConfig(n_embd=64, n_layer=1, n_head=2)
    assert AudioConfig.from_dict(config.to_dict()) == config


def test_encoder_learns_to_tell_the_ten_digits_apart():
    # The whole path trains: a tiny encoder + mean pooling + a linear head fits the ten real digits.
    encoder = small_encoder(n_embd=32, n_layer=1, n_head=2).train()
    mels = [digit_mel(d) for d in range(10)]
    frames = max(m.shape[-1] for m in mels)
    batch = torch.cat([torch.nn.functional.pad(m, (0, frames - m.shape[-1])) for m in mels])
    lengths = torch.tensor([m.shape[-1] for m in mels])
    n = AudioEncoder.encoded_lengths(lengths)
    head = torch.nn.Linear(32, 10)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=3e-3)
    labels = torch.arange(10)
    for _ in range(60):
        pooled = encoder(batch, lengths).sum(dim=1) / n[:, None]
        loss = torch.nn.functional.cross_entropy(head(pooled), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pooled = encoder.eval()(batch, lengths).sum(dim=1) / n[:, None]
    assert (head(pooled).argmax(dim=1) == labels).all()
