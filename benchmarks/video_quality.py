"""Video quality: "which way does the digit move?" answered by the GPT from a clip of frames.

The clips are moving MNIST digits (`gptkit.data.video.moving_digits`, seed 0): a digit drifts up, down, left
or right across the frames from a uniformly random start, so one frame says nothing of the direction and
only the change across frames does. Each frame goes through the one image encoder, gets a learned temporal
position embedding and keeps its own tokens (`MultimodalConfig(modality="video", frames=...)`); the GPT reads
them in time order (early fusion) and answers " up", " down", " left" or " right". Split: stratified by
direction, 80/10/10. In the same run and on the same split:
- chance (25%);
- scikit-learn logistic regression on the pixels of one frame (the single-frame baseline: it must sit at
  chance, which shows the task needs time) and on the pixels of every frame side by side;
- the trained model with its test clips' frames all replaced by the first frame (a still clip: the
  blind control for motion), and with the clips shuffled across the examples.

    python benchmarks/video_quality.py                 # ~8 min on 2 cores
    python benchmarks/video_quality.py --steps 500 --clips 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a plain script from anywhere: gptkit and the helpers
from _common import print_machine_info, print_table  # noqa: E402
from _multimodal import HEADERS, accuracy, baseline_row, scored_rows, train_model  # noqa: E402

from gptkit.data.images import stratified_indices  # noqa: E402
from gptkit.data.multimodal import moving_mnist_examples  # noqa: E402
from gptkit.data.video import DIRECTIONS  # noqa: E402
from gptkit.finetune.multimodal import load_multimodal  # noqa: E402
from gptkit.models.multimodal import MultimodalConfig  # noqa: E402
from gptkit.models.vision import VisionConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=64, help="n_embd of the GPT and the image encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (OUT/video/best is a checkpoint)")
    args = parser.parse_args()
    print_machine_info()
    config = MultimodalConfig(fusion="early", modality="video", frames=args.frames,
                              vision=VisionConfig(kind="vit", patch_size=7, n_embd=args.width, n_layer=1, n_head=4))
    tokenizer = Tokenizer.train_char(["direction: " + " ".join(DIRECTIONS)])
    examples, directions = moving_mnist_examples(tokenizer, config.media_tokens, frames=args.frames, count=args.clips,
                                                 seed=args.seed)
    train_rows, val_rows, test_rows = stratified_indices(directions, (0.8, 0.1, 0.1), seed=0)
    print(f"moving MNIST: {args.clips} clips of {args.frames} frames, {len(train_rows)} train / {len(val_rows)} val / "
          f"{len(test_rows)} test; {config.media_tokens} video tokens per clip")

    from sklearn.linear_model import LogisticRegression  # the baselines' library, needed only here

    rows = [baseline_row("chance (4 directions)", 1 / len(DIRECTIONS))]
    for name, pixels in (("one frame", examples.media[:, 0].reshape(len(examples), -1)),
                         (f"all {args.frames} frames side by side", examples.media.reshape(len(examples), -1))):
        started = time.perf_counter()
        fit = LogisticRegression(max_iter=2000).fit(pixels[train_rows], directions[train_rows])
        rows.append(baseline_row(f"logistic regression on the pixels of {name}",
                                 fit.score(pixels[test_rows], directions[test_rows]),
                                 fit.coef_.size + fit.intercept_.size, time.perf_counter() - started))
    with tempfile.TemporaryDirectory() as tmp:
        run = train_model(config, tokenizer, examples.subset(train_rows), examples.subset(val_rows), steps=args.steps,
                          run_dir=(args.out or Path(tmp)) / "video", width=args.width, block_size=96,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        test = examples.subset(test_rows)
        rows += scored_rows(f"gptkit, {args.frames} frames x {config.tokens_per_item} tokens, early fusion", run, test,
                            what="clips")
        still = test.with_media(np.repeat(test.media[:, :1], args.frames, axis=1))
        best, _ = load_multimodal(run.best_dir)
        rows.append(baseline_row("  blind: every frame the first (no motion)", accuracy(best, still), ""))
    print()
    print_table([[row[h] for h in HEADERS] for row in rows], HEADERS)
    print(f"gptkit: a {args.width}-wide 2-layer GPT + a ViT of 7x7 patches per frame, {args.steps} steps of "
          f"{args.batch_size}; an answer counts when greedy decoding produces it.")


if __name__ == "__main__":
    main()
