"""Multimodal quality: "which digit?" answered by the GPT from an MNIST image, early fusion and cross-attention.

For each fusion the script trains a small GPT with a CNN image encoder and a projector from scratch on the
bundled 5,000 MNIST digits (stratified 80/10/10 split, seed 0), through the one training loop
(`MultimodalTask`: loss on the answer tokens only; best checkpoint by validation accuracy), then scores
the held-out test split. An answer counts when greedy decoding produces it: " 7" after "<image>digit:".

Beside it, in the same run and on the same split:
- scikit-learn logistic regression on the raw pixels (the target: at or above it);
- the majority class (chance: 10%);
- two blind controls of the trained model: the images zeroed, and the images shuffled across the test
  examples. Both must fall to chance, which shows the answers come through the image path.

    python benchmarks/multimodal_quality.py                       # early and cross, ~6 min on 2 cores
    python benchmarks/multimodal_quality.py --fusions early --steps 300 --out out/mnist   # keep the runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a plain script from anywhere: gptkit and _common
from _common import print_machine_info, print_table  # noqa: E402

from gptkit.config import ModelConfig  # noqa: E402
from gptkit.data.images import bundled_mnist, stratified_indices  # noqa: E402
from gptkit.data.multimodal import MediaExamples, media_prompt  # noqa: E402
from gptkit.finetune.multimodal import build_multimodal, load_multimodal  # noqa: E402
from gptkit.models.gpt import GPT  # noqa: E402
from gptkit.models.multimodal import MultimodalConfig  # noqa: E402
from gptkit.models.vision import VisionConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402
from gptkit.training.loop import TrainConfig, train  # noqa: E402
from gptkit.training.tasks.multimodal import MultimodalTask, answer_scores  # noqa: E402


DEFAULT_STEPS = {"early": 1500, "cross": 3000}


def examples(tokenizer: Tokenizer, images: np.ndarray, labels: np.ndarray, rows: np.ndarray,
             media_tokens: int) -> MediaExamples:
    prompt = media_prompt(tokenizer, "<image>digit:", media_tokens)
    return MediaExamples(images[rows, None].astype(np.float32) / 255.0, [prompt] * len(rows),
                         [tokenizer.encode(f" {labels[i]}") for i in rows])


def accuracy(model, data: MediaExamples) -> float:
    _, correct = answer_scores(model, data, pad_id=0)
    return sum(correct) / len(correct)


def run_fusion(fusion: str, args, tokenizer, images, labels, splits, workdir: Path) -> list[dict]:
    train_rows, val_rows, test_rows = splits
    config = MultimodalConfig(fusion=fusion, vision=VisionConfig(kind="cnn", n_embd=args.width, n_layer=1,
                                                                 n_head=4))
    media_tokens = config.media_tokens if fusion == "early" else 0
    data = [examples(tokenizer, images, labels, rows, media_tokens) for rows in (train_rows, val_rows, test_rows)]
    torch.manual_seed(args.seed)
    gpt = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=args.width))
    model = build_multimodal(gpt, config)
    task = MultimodalTask(data[0], data[1], batch_size=args.batch_size, pad_id=0, seed=args.seed)
    started = time.perf_counter()
    steps = args.steps or DEFAULT_STEPS[fusion]
    train(model, task, TrainConfig(max_iters=steps, learning_rate=args.lr, warmup_iters=50,
                                   eval_interval=max(steps // 5, 1), weight_decay=0.0, seed=args.seed),
          tokenizer=tokenizer, run_dir=workdir / fusion, quiet=True)
    seconds = time.perf_counter() - started
    best, _ = load_multimodal(workdir / fusion / "best")
    test = data[2]
    shuffled = MediaExamples(test.images[np.random.default_rng(0).permutation(len(test))], test.prompts, test.answers)
    zeroed = MediaExamples(np.zeros_like(test.images), test.prompts, test.answers)
    parameters = sum(p.numel() for p in best.parameters())
    return [{"method": f"gptkit {fusion} fusion", "test accuracy": f"{accuracy(best, test):.3f}",
             "parameters trained": f"{parameters:,}", "train time s": f"{seconds:.0f}"},
            {"method": f"  blind: images zeroed ({fusion})", "test accuracy": f"{accuracy(best, zeroed):.3f}",
             "parameters trained": "", "train time s": ""},
            {"method": f"  blind: images shuffled ({fusion})", "test accuracy": f"{accuracy(best, shuffled):.3f}",
             "parameters trained": "", "train time s": ""}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusions", default="early,cross")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (default: 1500 for early fusion, 3000 for cross: its gates start closed)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=64, help="n_embd of the GPT and the image encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep each fusion's run here (OUT/early, OUT/cross; best/ is a checkpoint LLM.load reads)")
    args = parser.parse_args()
    print_machine_info()
    images, labels = bundled_mnist()
    splits = stratified_indices(labels, (0.8, 0.1, 0.1), seed=0)
    train_rows, _, test_rows = splits
    print(f"MNIST: {len(train_rows)} train / {len(splits[1])} val / {len(test_rows)} test images")

    from sklearn.linear_model import LogisticRegression  # the baseline's library, needed only here

    started = time.perf_counter()
    pixels = images.reshape(len(images), -1) / 255.0
    baseline = LogisticRegression(max_iter=2000).fit(pixels[train_rows], labels[train_rows])
    rows = [{"method": "logistic regression on pixels (sklearn)",
             "test accuracy": f"{baseline.score(pixels[test_rows], labels[test_rows]):.3f}",
             "parameters trained": f"{baseline.coef_.size + baseline.intercept_.size:,}",
             "train time s": f"{time.perf_counter() - started:.0f}"},
            {"method": "majority class", "test accuracy": f"{np.mean(labels[test_rows] == np.bincount(labels[train_rows]).argmax()):.3f}",
             "parameters trained": "0", "train time s": "0"}]
    tokenizer = Tokenizer.train_char(["digit: 0123456789 "])
    with tempfile.TemporaryDirectory() as tmp:
        for fusion in args.fusions.split(","):
            rows += run_fusion(fusion, args, tokenizer, images, labels, splits, args.out or Path(tmp))
    print()
    headers = ["method", "test accuracy", "parameters trained", "train time s"]
    print_table([[row[h] for h in headers] for row in rows], headers)
    steps = args.steps or ", ".join(f"{DEFAULT_STEPS[f]} ({f})" for f in args.fusions.split(","))
    print(f"gptkit: a {args.width}-wide 2-layer GPT + CNN encoder, {steps} steps of {args.batch_size}; an answer "
          "counts when greedy decoding produces it. Blind controls: the same trained model, images zeroed or shuffled.")


if __name__ == "__main__":
    main()
