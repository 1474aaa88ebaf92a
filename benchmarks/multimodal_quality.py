"""Multimodal quality: "which digit?" answered by the GPT from an MNIST image: early fusion, cross-attention and
late fusion.

For each fusion the script trains a small GPT with a CNN image encoder and a projector from scratch on the
bundled 5,000 MNIST digits (stratified 80/10/10 split, seed 0), through the one training loop
(`MultimodalTask`: loss on the answer tokens only; best checkpoint by validation accuracy), then scores
the held-out test split. An answer counts when greedy decoding produces it: " 7" after "<image>digit:"; for
late fusion (text and image encoded apart, joined at a classification head over the ten answers) when the
head's most likely class is the right one.

Beside it, in the same run and on the same split:
- scikit-learn logistic regression on the raw pixels (the target: at or above it);
- the majority class (chance: 10%);
- two blind controls of the trained model: the images zeroed, and the images shuffled across the test
  examples. Both must fall to chance, which shows the answers come through the image path.

    python benchmarks/multimodal_quality.py                       # early, cross and late, ~8 min on 2 cores
    python benchmarks/multimodal_quality.py --fusions early --steps 300 --out out/mnist   # keep the runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a plain script from anywhere: gptkit and _common
from _common import print_machine_info, print_table  # noqa: E402
from _multimodal import HEADERS, baseline_row, scored_rows, train_model  # noqa: E402

from gptkit.data.images import bundled_mnist, stratified_indices  # noqa: E402
from gptkit.data.multimodal import MediaExamples, media_prompt  # noqa: E402
from gptkit.models.multimodal import MultimodalConfig  # noqa: E402
from gptkit.models.vision import VisionConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402
from gptkit.training.tasks.multimodal import answer_classes  # noqa: E402

DEFAULT_STEPS = {"early": 1500, "cross": 3000, "late": 1000}


def examples(tokenizer: Tokenizer, images: np.ndarray, labels: np.ndarray, rows: np.ndarray,
             media_tokens: int) -> MediaExamples:
    prompt = media_prompt(tokenizer, "<image>digit:", media_tokens)
    return MediaExamples(images[rows, None].astype(np.float32) / 255.0, [prompt] * len(rows),
                         [tokenizer.encode(f" {labels[i]}") for i in rows])


def run_fusion(fusion: str, args, tokenizer, images, labels, splits, workdir: Path) -> list[dict]:
    config = MultimodalConfig(fusion=fusion, vision=VisionConfig(kind="cnn", n_embd=args.width, n_layer=1, n_head=4))
    media_tokens = config.media_tokens if fusion == "early" else 0  # cross and late: the text alone
    train_set, val_set, test_set = (examples(tokenizer, images, labels, rows, media_tokens) for rows in splits)
    classes = answer_classes(train_set) if fusion == "late" else None
    if classes is not None:
        config.labels = [tokenizer.decode(list(c)) for c in classes]
    steps = args.steps or DEFAULT_STEPS[fusion]
    run = train_model(config, tokenizer, train_set, val_set, steps=steps, run_dir=workdir / fusion, width=args.width,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, classes=classes)
    return scored_rows(f"gptkit {fusion} fusion", run, test_set, what="images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusions", default="early,cross,late")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (default: 1500 for early fusion, 3000 for cross: its gates start "
                             "closed, 1000 for late)")
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
    rows = [baseline_row("logistic regression on pixels (sklearn)", baseline.score(pixels[test_rows], labels[test_rows]),
                         baseline.coef_.size + baseline.intercept_.size, time.perf_counter() - started),
            baseline_row("majority class", float(np.mean(labels[test_rows] == np.bincount(labels[train_rows]).argmax())))]
    tokenizer = Tokenizer.train_char(["digit: 0123456789 "])
    with tempfile.TemporaryDirectory() as tmp:
        for fusion in args.fusions.split(","):
            rows += run_fusion(fusion, args, tokenizer, images, labels, splits, args.out or Path(tmp))
    print()
    print_table([[row[h] for h in HEADERS] for row in rows], HEADERS)
    steps = args.steps or ", ".join(f"{DEFAULT_STEPS[f]} ({f})" for f in args.fusions.split(","))
    print(f"gptkit: a {args.width}-wide 2-layer GPT + CNN encoder, {steps} steps of {args.batch_size}; an answer "
          "counts when greedy decoding produces it. Blind controls: the same trained model, images zeroed or shuffled.")


if __name__ == "__main__":
    main()
