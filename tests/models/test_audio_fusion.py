"""Audio into the GPT: the clip's tokens through early fusion, training with augmentation, the CLI, generation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gptkit.api import LLM
from gptkit.config import ModelConfig
from gptkit.data.audio import augment_clips, bundled_audio, read_audio
from gptkit.data.multimodal import PLACEHOLDERS, MediaExamples, fit_clip, media_prompt
from gptkit.errors import GptkitError
from gptkit.finetune.multimodal import build_multimodal, load_multimodal
from gptkit.models.audio import AudioConfig
from gptkit.models.gpt import GPT
from gptkit.models.multimodal import MultimodalConfig
from gptkit.models.projector import Projector, ProjectorConfig
from gptkit.tokenizer import Tokenizer
from gptkit.training.loop import TrainConfig, train
from gptkit.training.tasks.multimodal import MultimodalTask, answer_scores

DIGITS = [f"symbols_math_{d}_en_GB" for d in range(10)]


def audio_config(**overrides) -> MultimodalConfig:
    fields = dict(fusion="early", modality="audio", clip_seconds=1.0,
                  audio=AudioConfig(n_embd=32, n_layer=1, n_head=2), projector=ProjectorConfig("pool", 5))
    return MultimodalConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def digit_clips() -> np.ndarray:
    return np.stack([fit_clip(read_audio(bundled_audio(name)), 16000) for name in DIGITS])


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_char(["digit: 0123456789 "])


def test_an_audio_clip_becomes_a_fixed_number_of_tokens(digit_clips):
    config = audio_config()
    assert config.clip_frames == 100 and config.encoder_tokens == 50 and config.media_tokens == 10
    torch.manual_seed(0)
    model = build_multimodal(GPT(ModelConfig(vocab_size=32, block_size=64, n_layer=1, n_head=2, n_embd=32)),
                             config).eval()
    with torch.no_grad():
        tokens = model.media_tokens(torch.from_numpy(digit_clips[:3]))
    assert tokens.shape == (3, 10, 32)
    assert not torch.allclose(tokens[0], tokens[1], atol=1e-4)  # two digits are two different inputs
    with pytest.raises(GptkitError, match="clips of 16000 samples"):
        model.media_tokens(torch.zeros(1, 8000))


def test_sequence_pooling_and_shuffle_merge_runs_of_positions():
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    pool = Projector(3, 4, ProjectorConfig("pool", 2), layout="sequence")
    assert torch.equal(pool.reduce(x), x[:, :6].view(2, 3, 2, 3).mean(2))  # the odd last position is dropped
    shuffle = Projector(3, 4, ProjectorConfig("shuffle", 2), layout="sequence")
    assert torch.equal(shuffle.reduce(x), x[:, :6].reshape(2, 3, 6))
    assert ProjectorConfig("pool", 2).tokens_out(7, "sequence") == 3 and ProjectorConfig("pool", 2).tokens_out(16) == 4


def test_clip_length_and_modality_are_validated():
    with pytest.raises(GptkitError, match="clip_seconds"):
        audio_config(clip_seconds=40.0).validate()
    with pytest.raises(GptkitError, match="2 or more frames"):
        MultimodalConfig(modality="video", frames=1).validate()
    with pytest.raises(GptkitError, match="modality"):
        MultimodalConfig(modality="smell").validate()  # type: ignore[arg-type]


def test_augmentation_is_deterministic_under_its_generator_and_changes_the_clip(digit_clips):
    clips = torch.from_numpy(digit_clips[:4])
    a = augment_clips(clips, torch.Generator().manual_seed(3))
    b = augment_clips(clips, torch.Generator().manual_seed(3))
    c = augment_clips(clips, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, clips)
    assert a.shape == clips.shape and float(a.abs().max()) <= 1.0


@pytest.mark.slow  # ~40 s of training; the benchmarks measure the same at length
def test_audio_answers_are_learned_through_the_audio_path(digit_clips, tokenizer, tmp_path):
    # The ten spoken digits: the model must learn which clip says which digit; with the clips shuffled across
    # the examples the same model falls back to (near) chance.
    config = audio_config()
    prompt = media_prompt(tokenizer, "<audio>digit:", config.media_tokens, placeholder=PLACEHOLDERS["audio"])
    examples = MediaExamples(digit_clips, [prompt] * 10, [tokenizer.encode(f" {d}") for d in range(10)])
    torch.manual_seed(0)
    model = build_multimodal(GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2,
                                             n_embd=32)), config)
    task = MultimodalTask(examples, examples, batch_size=10, seed=0)
    train(model, task, TrainConfig(max_iters=150, learning_rate=3e-3, warmup_iters=10, eval_interval=150,
                                   weight_decay=0.0), tokenizer=tokenizer, run_dir=tmp_path / "run", quiet=True)
    best, _ = load_multimodal(tmp_path / "run" / "best")
    _, correct = answer_scores(best, examples, pad_id=0)
    _, shuffled = answer_scores(best, examples.with_media(digit_clips[np.roll(np.arange(10), 3)]), pad_id=0)
    assert sum(correct) >= 8 and sum(shuffled) <= 3
    llm = LLM.load(tmp_path / "run" / "best")
    texts = llm.generate(["digit:"] * 3, audio=[[str(bundled_audio(DIGITS[d]))] for d in range(3)], max_tokens=2,
                         temperature=0)
    assert [t[0] for t in texts] == [f" {d}" for d in range(3)] or sum(correct) < 10  # greedy = the scored answer
    with pytest.raises(GptkitError, match="reads audio, not images"):
        llm.generate("digit:", images=[np.zeros((1, 28, 28), np.float32)])
    with pytest.raises(GptkitError, match="placeholder"):
        llm.generate("<audio><audio>digit:", audio=[digit_clips[0]])


def test_gptkit_finetune_and_generate_take_an_audio_jsonl(tmp_path, tokenizer):
    from gptkit.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base", GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=1,
                                                       n_head=2, n_embd=32)), tokenizer)
    rows = [{"audio": str(bundled_audio(DIGITS[d % 10])), "prompt": "digit:", "answer": f" {d % 10}"}
            for d in range(30)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cli(*args, check=True):
        done = subprocess.run([sys.executable, "-m", "gptkit", *args], capture_output=True, text=True)
        assert not check or done.returncode == 0, done.stderr
        return done

    cli("finetune", "--checkpoint", str(tmp_path / "base"), "--task", "multimodal", "--data",
        str(tmp_path / "data.jsonl"), "--clip-seconds", "1.0", "--media-reduction", "pool", "--media-factor", "5",
        "--method", "full", "--max-iters", "5", "--eval-interval", "5", "--out", str(tmp_path / "ft"), "--quiet")
    report = json.loads((tmp_path / "ft" / "report.json").read_text())["run"]
    assert report["modality"] == "audio" and "test_accuracy_media_zeroed" in report
    assert json.loads((tmp_path / "ft" / "best" / "multimodal.json").read_text())["modality"] == "audio"
    done = cli("generate", "--checkpoint", str(tmp_path / "ft"), "--prompt", "digit:", "--audio", str(bundled_audio(DIGITS[1])),
               "--max-tokens", "2", "--temperature", "0")
    assert done.stdout.startswith("digit:")
    too_long = cli("finetune", "--checkpoint", str(tmp_path / "base"), "--task", "multimodal", "--data",
                   str(tmp_path / "data.jsonl"), "--clip-seconds", "1.0", "--out", str(tmp_path / "bad"), check=False)
    assert too_long.returncode == 2 and "50 tokens" in too_long.stderr and "48" in too_long.stderr
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"audio": "broken.wav", "answer": " 1"}) + "\n")
    broken = cli("finetune", "--checkpoint", str(tmp_path / "base"), "--task", "multimodal", "--data",
                 str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "bad2"), check=False)
    assert broken.returncode == 2 and "broken.wav" in broken.stderr and "Traceback" not in broken.stderr
