"""Audio quality: the GPT answers from a sound — "which digit?" from a spoken digit, and "which category?" from a
sound effect — with an audio encoder (Whisper's log-mel recipe, conv + Transformer) and early fusion.

Data: the Tux Paint recordings in `../shared/data/tuxpaint_multimodal` (GPL-2, see its PROVENANCE.md; pass
`--tuxpaint DIR` for another copy): 200 spoken digits 0-9 in 21 locales (a digit is said in a different
language in most held-out clips, so this measures what carries across languages), and the 136 stamp sound
effects labelled with their stamp's category (categories with at least 7 clips). Splits are stratified by
answer, 60/20/20, seed 0. For each task the script trains a small GPT + audio encoder from scratch through
the one training loop (loss on the answer tokens, best checkpoint by validation accuracy) and reports, in
the same run and on the same split:
- chance (1 / classes) and the majority class;
- scikit-learn logistic regression on each clip's log-mel statistics (mean and standard deviation of every
  band over time): a baseline without a network;
- two blind controls of the trained model: the audio zeroed, and the audio shuffled across the test
  examples. Both must fall to chance or the majority class: the answers come through the audio path.

    python benchmarks/audio_quality.py                      # both tasks, ~5 min on 2 cores
    python benchmarks/audio_quality.py --tasks digits --steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a plain script from anywhere: gptkit and the helpers
from _common import print_machine_info, print_table  # noqa: E402
from _multimodal import HEADERS, baseline_row, scored_rows, train_model  # noqa: E402

from gptkit.data.audio import augment_clips, read_audio  # noqa: E402
from gptkit.data.images import stratified_indices  # noqa: E402
from gptkit.data.multimodal import PLACEHOLDERS, MediaExamples, fit_clip, media_prompt  # noqa: E402
from gptkit.models.audio import AudioConfig, log_mel_spectrogram  # noqa: E402
from gptkit.models.multimodal import MultimodalConfig  # noqa: E402
from gptkit.models.projector import ProjectorConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402

DEFAULT_TUXPAINT = HERE.parent.parent / "shared" / "data" / "tuxpaint_multimodal"


def spoken_digits(root: Path) -> tuple[list[Path], list[str]]:
    rows = [json.loads(line) for line in (root / "sfx_unpaired.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "spoken_symbol" and r["symbol"].isdigit()]
    return [root / r["sfx"] for r in rows], [r["symbol"] for r in rows]


def sound_effects(root: Path, min_count: int = 7) -> tuple[list[Path], list[str]]:
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows += [json.loads(line) for line in (root / "sfx_unpaired.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "sfx" in r and r.get("kind", "sound_effect") == "sound_effect"]
    counts = Counter(r["category"] for r in rows)
    rows = [r for r in rows if counts[r["category"]] >= min_count]
    return [root / r["sfx"] for r in rows], [r["category"] for r in rows]


TASKS = {  # name: (reader, prompt, clip seconds, projector pooling factor)
    "digits": (spoken_digits, "<audio>digit:", 1.5, 5),
    "sfx": (sound_effects, "<audio>category:", 3.0, 10),
}


def mel_statistics(clips: np.ndarray) -> np.ndarray:
    """Per clip, the mean and standard deviation over time of each log-mel band (160 numbers)."""
    mel = log_mel_spectrogram(torch.from_numpy(clips)).numpy()
    return np.concatenate([mel.mean(axis=2), mel.std(axis=2)], axis=1)


def run_task(name: str, args, root: Path, workdir: Path) -> list[dict]:
    reader, prompt_text, seconds, factor = TASKS[name]
    paths, answers = reader(root)
    classes = sorted(set(answers))
    labels = np.array([classes.index(a) for a in answers])
    config = MultimodalConfig(fusion="early", modality="audio", clip_seconds=seconds,
                              audio=AudioConfig(n_embd=args.width, n_layer=2, n_head=4),
                              projector=ProjectorConfig("pool", factor))
    clips = np.stack([fit_clip(read_audio(p), config.clip_samples) for p in paths])
    tokenizer = Tokenizer.train_char([prompt_text.replace(PLACEHOLDERS["audio"], "") + " " + " ".join(classes)])
    prompt = media_prompt(tokenizer, prompt_text, config.media_tokens, placeholder=PLACEHOLDERS["audio"])
    examples = MediaExamples(clips, [prompt] * len(clips), [tokenizer.encode(f" {a}") for a in answers])
    train_rows, val_rows, test_rows = stratified_indices(labels, (0.6, 0.2, 0.2), seed=0)
    print(f"{name}: {len(clips)} clips, {len(classes)} classes, {len(train_rows)} train / {len(val_rows)} val / "
          f"{len(test_rows)} test; {config.media_tokens} audio tokens per {seconds:g} s clip")
    started = time.perf_counter()
    from sklearn.linear_model import LogisticRegression  # the baseline's library, needed only here
    from sklearn.preprocessing import StandardScaler

    features = mel_statistics(clips)
    scaler = StandardScaler().fit(features[train_rows])
    baseline = LogisticRegression(max_iter=5000).fit(scaler.transform(features[train_rows]), labels[train_rows])
    baseline_accuracy = baseline.score(scaler.transform(features[test_rows]), labels[test_rows])
    rows = [baseline_row(f"[{name}] chance (1 / {len(classes)} classes)", 1 / len(classes)),
            baseline_row(f"[{name}] majority class",
                         float(np.mean(labels[test_rows] == np.bincount(labels[train_rows]).argmax()))),
            baseline_row(f"[{name}] logistic regression on log-mel statistics", baseline_accuracy,
                         baseline.coef_.size + baseline.intercept_.size, time.perf_counter() - started)]
    run = train_model(config, tokenizer, examples.subset(train_rows), examples.subset(val_rows), steps=args.steps,
                      run_dir=workdir / name, width=args.width, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      augment=augment_clips if args.augment else None)
    return rows + scored_rows(f"[{name}] gptkit audio encoder, early fusion", run, examples.subset(test_rows),
                              what="audio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="digits,sfx")
    parser.add_argument("--tuxpaint", type=Path, default=DEFAULT_TUXPAINT, help="the tuxpaint_multimodal directory")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=64, help="n_embd of the GPT and the audio encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true",
                        help="a random shift, gain and noise on every training clip each step (on 122 clips it "
                             "slowed learning more than it helped: off by default)")
    parser.add_argument("--out", type=Path, default=None, help="keep each task's run here (OUT/digits, OUT/sfx)")
    args = parser.parse_args()
    if not (args.tuxpaint / "metadata.jsonl").is_file():
        sys.exit(f"no Tux Paint data at {args.tuxpaint}: pass --tuxpaint DIR (the tuxpaint_multimodal directory)")
    print_machine_info()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            rows += run_task(name, args, args.tuxpaint, args.out or Path(tmp))
    print()
    print_table([[row[h] for h in HEADERS] for row in rows], HEADERS)
    print(f"gptkit: a {args.width}-wide 2-layer GPT + a 2-block audio encoder, {args.steps} steps of "
          f"{args.batch_size}; an answer counts when greedy decoding produces it. Blind controls: the same trained "
          "model, the test audio zeroed or shuffled.")


if __name__ == "__main__":
    main()
