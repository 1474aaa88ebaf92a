"""Late fusion: text and image encoded apart and joined at a classification head, trained in the one loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gptkit.api import LLM
from gptkit.checkpoint import save_checkpoint
from gptkit.config import ModelConfig
from gptkit.data.images import bundled_mnist, stratified_indices
from gptkit.data.multimodal import MediaExamples, media_prompt
from gptkit.errors import GptkitError
from gptkit.finetune.multimodal import build_multimodal, load_multimodal
from gptkit.models.gpt import GPT
from gptkit.models.multimodal import MultimodalConfig
from gptkit.models.vision import VisionConfig
from gptkit.tokenizer import Tokenizer
from gptkit.training.loop import TrainConfig, train
from gptkit.training.tasks.multimodal import MultimodalTask, answer_classes, answer_scores


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_char(["digit: 0123456789 "])


def digits(tokenizer: Tokenizer, rows: np.ndarray, images: np.ndarray, labels: np.ndarray) -> MediaExamples:
    prompt = media_prompt(tokenizer, "<image>digit:", 0)  # late fusion: the text alone, no media slots
    return MediaExamples(images[rows, None].astype(np.float32) / 255.0, [prompt] * len(rows),
                         [tokenizer.encode(f" {labels[i]}") for i in rows])


@pytest.mark.slow  # ~40 s of training; the benchmarks measure the same at length
def test_late_fusion_learns_digits_through_its_head_and_the_image_path(tokenizer, tmp_path):
    images, labels = bundled_mnist()
    train_rows, val_rows = stratified_indices(labels, (0.3, 0.06), seed=0)
    train_set, val_set = (digits(tokenizer, rows, images, labels) for rows in (train_rows, val_rows))
    classes = answer_classes(train_set)
    assert len(classes) == 10
    config = MultimodalConfig(fusion="late", vision=VisionConfig(kind="cnn", n_embd=32, n_layer=0),
                              labels=[tokenizer.decode(list(c)) for c in classes])
    torch.manual_seed(0)
    model = build_multimodal(GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2,
                                             n_embd=32)), config)
    task = MultimodalTask(train_set, val_set, batch_size=64, seed=0, classes=classes)
    train(model, task, TrainConfig(max_iters=120, learning_rate=3e-3, warmup_iters=10, eval_interval=60,
                                   weight_decay=0.0), tokenizer=tokenizer, run_dir=tmp_path / "run", quiet=True)
    best, _ = load_multimodal(tmp_path / "run" / "best")
    _, correct = answer_scores(best, val_set, pad_id=0, classes=classes)
    _, blind = answer_scores(best, val_set.with_media(np.zeros_like(val_set.media)), pad_id=0, classes=classes)
    assert np.mean(correct) > 0.35 and np.mean(blind) < 0.2  # chance: 0.1; the benchmark trains for longer
    # LLM.classify with images: the same head, the same answers, from image files or arrays
    llm = LLM.load(tmp_path / "run" / "best")
    predictions = llm.classify(["digit:"] * 20, images=list(val_set.media[:20]))
    predicted = [config.labels.index(p.label) for p in predictions]
    index = {c: i for i, c in enumerate(classes)}
    truth = [index[tuple(a)] for a in val_set.answers[:20]]
    with torch.no_grad():
        from gptkit.training.tasks.multimodal import label_batch

        media, idx, lengths, _ = label_batch(val_set, list(range(20)), classes, 0)
        expected = best(idx, media, lengths).argmax(-1).tolist()
    assert predicted == expected and np.mean(np.array(predicted) == np.array(truth)) > 0.25
    assert abs(sum(predictions[0].probs.values()) - 1) < 1e-5
    with pytest.raises(GptkitError, match="one per text"):
        llm.classify(["digit:"] * 2, images=[val_set.media[0]])
    with pytest.raises(GptkitError, match="pass images="):
        llm.classify(["digit:"])
    with pytest.raises(GptkitError, match="early-fusion"):
        llm.generate("digit:", images=[val_set.media[0]])


def test_late_fusion_config_needs_labels():
    with pytest.raises(GptkitError, match="2 or more labels"):
        MultimodalConfig(fusion="late").validate()
    with pytest.raises(GptkitError, match="only late fusion has labels"):
        MultimodalConfig(fusion="early", labels=["a", "b"]).validate()


def test_gptkit_finetune_fusion_late_reports_accuracy_and_a_blind_control(tokenizer, tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base", GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1,
                                                       n_head=2, n_embd=32)), tokenizer)
    done = subprocess.run([sys.executable, "-m", "gptkit", "finetune", "--checkpoint", str(tmp_path / "base"),
                           "--task", "multimodal", "--fusion", "late", "--data", "mnist", "--method", "full",
                           "--max-iters", "100", "--eval-interval", "50", "--learning-rate", "3e-3", "--out",
                           str(tmp_path / "late"), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "late" / "report.json").read_text())["run"]
    assert report["fusion"] == "late" and report["test_accuracy"] > report["test_accuracy_media_zeroed"]
    spec = json.loads((tmp_path / "late" / "best" / "multimodal.json").read_text())
    assert spec["fusion"] == "late" and sorted(spec["labels"]) == [f" {d}" for d in range(10)]
