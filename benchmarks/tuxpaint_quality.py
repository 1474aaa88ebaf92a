"""Tux Paint quality: one small multimodal GPT learns to name a picture's category and to caption it.

Data: the 950 captioned Tux Paint stamps in `../shared/data/tuxpaint_multimodal` (GPL-2, see its PROVENANCE.md;
`--tuxpaint DIR` for another copy), 16 categories, English captions ("A frog."). Images are resized to 32x32
RGB; captions are kept to their first sentence (at most 64 characters); the split is stratified by category,
80/10/10, seed 0. One model (CNN encoder, 2x2-pooled to 16 media
tokens, early fusion) is trained through the one loop on both prompts at once: "<image>category:" -> " animals"
and "<image>caption:" -> " A frog.". On the held-out test images, in the same run:

Category (16-way), answered by greedy decoding, against the majority class and scikit-learn logistic
regression on the same pixels; blind controls: images zeroed and shuffled.

Captions, generated greedily, scored with sacrebleu (chrF and BLEU against the reference caption) and with
content-word recall (the share of the reference's words other than a/an/the/of/... that the caption holds);
baselines: the training set's most common caption for every image, and the model's own captions with the
images zeroed. A picture of 16 held-out images with their generated captions is written to `--grid`
(default out/tuxpaint_captions.png).

    python benchmarks/tuxpaint_quality.py                 # ~4 min on 2 cores
    python benchmarks/tuxpaint_quality.py --steps 300 --grid /tmp/grid.png
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a plain script from anywhere: gptkit and the helpers
from _common import print_machine_info, print_table  # noqa: E402
from _multimodal import HEADERS, baseline_row, scored_rows, train_model  # noqa: E402

from gptkit.api import LLM  # noqa: E402
from gptkit.data.images import read_image, stratified_indices  # noqa: E402
from gptkit.data.multimodal import MediaExamples, media_prompt  # noqa: E402
from gptkit.models.multimodal import MultimodalConfig  # noqa: E402
from gptkit.models.projector import ProjectorConfig  # noqa: E402
from gptkit.models.vision import VisionConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402

DEFAULT_TUXPAINT = HERE.parent.parent / "shared" / "data" / "tuxpaint_multimodal"
STOPWORDS = {"a", "an", "the", "of", "and", "with", "in", "on", "some", "letter", "number"}


def short_caption(caption: str, limit: int = 64) -> str:
    """The caption's first sentence, cut at a word boundary to `limit` characters (a tenth of the captions are
    longer descriptions; a char-level model of a 128-token context learns the short ones)."""
    first = caption.strip().split(". ")[0].strip()
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0]
    return first if first.endswith((".", "!", "?")) else first + "."


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS}


def word_recall(hypotheses: list[str], references: list[str]) -> float:
    scores = [len(content_words(h) & content_words(r)) / len(content_words(r))
              for h, r in zip(hypotheses, references) if content_words(r)]
    return float(np.mean(scores))


def caption_rows(name: str, hypotheses: list[str], references: list[str]) -> dict:
    import sacrebleu  # the metric's library, needed only here

    return {"captions": name, "chrF": f"{sacrebleu.corpus_chrf(hypotheses, [references]).score:.1f}",
            "BLEU": f"{sacrebleu.corpus_bleu(hypotheses, [references]).score:.1f}",
            "content-word recall": f"{word_recall(hypotheses, references):.3f}"}


def captions(llm: LLM, images: np.ndarray) -> list[str]:
    out = llm.generate(["<image>caption:"] * len(images), images=[[image] for image in images], max_tokens=40,
                       temperature=0, stop=["."])
    return [texts[0].strip() + "." for texts in out]


def write_grid(path: Path, images: np.ndarray, generated: list[str], references: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 4, figsize=(10, 11))
    for ax, image, caption, reference in zip(axes.flat, images, generated, references):
        ax.imshow(np.transpose(image, (1, 2, 0)), interpolation="nearest")
        ax.set_title(f"{caption}\n(ref: {reference})", fontsize=8)
        ax.axis("off")
    fig.suptitle("gptkit captions of 16 held-out Tux Paint stamps (32x32 input; greedy decoding)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tuxpaint", type=Path, default=DEFAULT_TUXPAINT, help="the tuxpaint_multimodal directory")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=96, help="n_embd of the GPT and the image encoder")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=Path("out/tuxpaint_captions.png"))
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (OUT/tuxpaint/best is a checkpoint)")
    args = parser.parse_args()
    if not (args.tuxpaint / "metadata.jsonl").is_file():
        sys.exit(f"no Tux Paint data at {args.tuxpaint}: pass --tuxpaint DIR (the tuxpaint_multimodal directory)")
    print_machine_info()
    rows = [json.loads(line) for line in (args.tuxpaint / "metadata.jsonl").read_text().splitlines() if line.strip()]
    images = np.stack([read_image(args.tuxpaint / r["image"], size=args.image_size, channels=3) for r in rows])
    categories = sorted({r["category"] for r in rows})
    labels = np.array([categories.index(r["category"]) for r in rows])
    references = [short_caption(r["caption"]) for r in rows]
    train_rows, val_rows, test_rows = stratified_indices(labels, (0.8, 0.1, 0.1), seed=0)
    config = MultimodalConfig(fusion="early", projector=ProjectorConfig("pool", 2),
                              vision=VisionConfig(kind="cnn", image_size=args.image_size, channels=3,
                                                  n_embd=args.width, n_layer=1, n_head=4))
    tokenizer = Tokenizer.train_char(["category: caption: " + " ".join(categories) + " ".join(references)])
    slots = config.media_tokens
    category_prompt = media_prompt(tokenizer, "<image>category:", slots)
    caption_prompt = media_prompt(tokenizer, "<image>caption:", slots)

    def examples(rows_: np.ndarray, *, with_captions: bool) -> MediaExamples:
        prompts = [category_prompt] * len(rows_)
        answers = [tokenizer.encode(f" {categories[labels[i]]}") for i in rows_]
        media = images[rows_]
        if with_captions:
            prompts += [caption_prompt] * len(rows_)
            answers += [tokenizer.encode(f" {references[i]}") for i in rows_]
            media = np.concatenate([media, media])
        return MediaExamples(media, prompts, answers)

    longest = max(len(caption_prompt) + len(tokenizer.encode(f" {r}")) for r in references)
    block_size = 1 << (longest - 1).bit_length()  # the longest prompt + caption fits
    print(f"Tux Paint: {len(rows)} images, {len(categories)} categories, {len(train_rows)} train / {len(val_rows)} "
          f"val / {len(test_rows)} test; {slots} image tokens per {args.image_size}x{args.image_size} picture")
    from sklearn.linear_model import LogisticRegression  # the baseline's library, needed only here

    started = time.perf_counter()
    pixels = images.reshape(len(images), -1)
    baseline = LogisticRegression(max_iter=3000).fit(pixels[train_rows], labels[train_rows])
    table = [baseline_row("chance (1 / 16 categories)", 1 / len(categories)),
             baseline_row("majority class", float(np.mean(labels[test_rows] == np.bincount(labels[train_rows]).argmax()))),
             baseline_row("logistic regression on pixels (sklearn)", baseline.score(pixels[test_rows], labels[test_rows]),
                          baseline.coef_.size + baseline.intercept_.size, time.perf_counter() - started)]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = (args.out or Path(tmp)) / "tuxpaint"
        run = train_model(config, tokenizer, examples(train_rows, with_captions=True),
                          examples(val_rows, with_captions=False), steps=args.steps, run_dir=run_dir, width=args.width,
                          block_size=block_size, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        table += scored_rows("gptkit category (CNN encoder, early fusion)", run,
                             examples(test_rows, with_captions=False), what="images")
        llm = LLM.load(run.best_dir)
        test_refs = [references[i] for i in test_rows]
        generated = captions(llm, images[test_rows])
        common = Counter(references[i] for i in train_rows).most_common(1)[0][0]
        caption_table = [caption_rows("gptkit, generated from the image", generated, test_refs),
                         caption_rows("  blind: images zeroed", captions(llm, np.zeros_like(images[test_rows])),
                                      test_refs),
                         caption_rows(f"most common training caption ({common!r})", [common] * len(test_refs),
                                      test_refs)]
    print()
    print_table([[row[h] for h in HEADERS] for row in table], HEADERS)
    print()
    caption_headers = ["captions", "chrF", "BLEU", "content-word recall"]
    print_table([[row[h] for h in caption_headers] for row in caption_table], caption_headers)
    write_grid(args.grid, images[test_rows[:16]], generated[:16], test_refs[:16])
    print(f"\n16 held-out images with their captions: {args.grid}")
    print(f"gptkit: a {args.width}-wide 2-layer GPT + a CNN encoder, {args.steps} steps of {args.batch_size}, "
          "category and caption prompts mixed in every batch; selection by validation category accuracy.")


if __name__ == "__main__":
    main()
