"""How long `gptkit convert` takes on a GPT-2-small-shape model (124M parameters), both ways.

A random-init `GPT2LMHeadModel` from transformers' default `GPT2Config` is saved with `save_pretrained`
(with GPT-2's real tokenizer, shipped in gptkit) to a temporary directory; then `import_hf` (HF dir ->
gptkit checkpoint) and `export_hf` (gptkit checkpoint -> HF dir) are timed, interleaved round by round
after one untimed warm-up round (so the files are in the page cache), median over --repeats rounds.
Each conversion reads every tensor, rearranges it (GPT-2's Conv1D weights are transposed) and writes
a new safetensors file, fsynced before the directory is renamed into place. MB/s is the weight file's
size over the median time. Finally the round trip is checked to be bit-identical.

    python benchmarks/convert_roundtrip.py               # median of 3
    python benchmarks/convert_roundtrip.py --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # run as a plain script from anywhere: gptkit and _common
from _common import interleaved_medians, print_machine_info, print_table, spread  # noqa: E402

from gptkit.data.tokenizers import load_tokenizer_preset  # noqa: E402
from gptkit.interop import export_hf, import_hf  # noqa: E402


def make_hf_dir(path: Path) -> int:
    """A random-init GPT-2-small-shape model and GPT-2's tokenizer in `path`; returns the parameter count."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config())
    model.save_pretrained(path)
    load_tokenizer_preset("gpt2").save(path)
    return sum(p.numel() for p in model.parameters())


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hf_dir, ckpt, back = root / "hf", root / "ckpt", root / "back"
        n_params = make_hf_dir(hf_dir)
        size_mb = (hf_dir / "model.safetensors").stat().st_size / 1e6
        samples = interleaved_medians({
            "import (HF -> gptkit)": lambda: import_hf(hf_dir, ckpt, overwrite=True),
            "export (gptkit -> HF)": lambda: export_hf(ckpt, back, overwrite=True),
        }, repeats=args.repeats)
        identical = same_tensors(hf_dir, back)
    print(f"\nGPT-2 small shape: {n_params / 1e6:.1f}M parameters, fp32, model.safetensors {size_mb:.0f} MB; "
          f"median of {args.repeats} (interleaved, after 1 warm-up round)\n")
    rows = [(name, s.median, spread(s.wall), size_mb / s.median, s.cpu_use) for name, s in samples.items()]
    print_table(rows, ["step", "median s", "range s", "MB/s", "CPU use"])
    print(f"\nround trip HF -> gptkit -> HF bit-identical: {identical}")
    print("command: python benchmarks/convert_roundtrip.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
