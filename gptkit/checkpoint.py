"""Checkpoints: one self-describing directory format, written atomically; knows nothing of fine-tuning or jobs (richer
kinds own their spec files and loaders).

A checkpoint directory holds `config.json` (the ModelConfig), `model.safetensors`, `tokenizer.json`
and, when written by training, `training_state.pt` (optimizer, step, RNG states, data position)
and `train_config.json`. A run directory holds `best/` and `last/` checkpoints plus logs;
anywhere a checkpoint is expected, a run directory means its best checkpoint.

Atomicity: a checkpoint is written to a temporary sibling directory and renamed into place, so a
crash mid-save leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_model as save_safetensors_from

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError, require
from gptkit.files import recover_interrupted_swap, write_atomically
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
STATE_FILE = "training_state.pt"
TRAIN_CONFIG_FILE = "train_config.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)


# The richer kinds of checkpoint: each adds a spec file to this format and owns its loader
# (`gptkit.api.load` dispatches). A kind's checkpoint may hold only an adapter, not full weights.
FINETUNE_FILE = "finetune.json"  # gptkit.finetune.spec
MULTIMODAL_FILE = "multimodal.json"  # gptkit.finetune.multimodal
QUANTIZATION_FILE = "quantization.json"  # gptkit.adapt.quantize
KIND_FILES = {"finetune": FINETUNE_FILE, "multimodal": MULTIMODAL_FILE, "quantized": QUANTIZATION_FILE}


def checkpoint_kind(path: Path) -> str:
    """"model" for a plain checkpoint, else the kind whose spec file the directory holds ("finetune")."""
    return next((kind for kind, name in KIND_FILES.items() if (Path(path) / name).is_file()), "model")


def is_checkpoint(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and ((path / WEIGHTS_FILE).is_file() or checkpoint_kind(path) != "model")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (then its best checkpoint, else its last)."""
    path = Path(path)
    require(path.exists(), f"checkpoint {path} does not exist")
    for name in ("best", "last"):
        recover_interrupted_swap(path / name)
    if is_checkpoint(path):
        required = (CONFIG_FILE, TOKENIZER_FILE) if checkpoint_kind(path) != "model" else REQUIRED_FILES
        missing = [f for f in required if not (path / f).is_file()]
        require(not missing, f"checkpoint {path} is missing {', '.join(missing)}")
        return path
    for name in ("best", "last"):
        if is_checkpoint(path / name):
            return path / name
    candidates = sorted(str(p.parent) for p in path.glob("*/" + CONFIG_FILE) if is_checkpoint(p.parent))
    hint = f"; did you mean {candidates[0]}?" if candidates else ""
    raise GptkitError(f"{path} is not a checkpoint: it has no {CONFIG_FILE} + {WEIGHTS_FILE} "
                      f"and no best/ or last/ checkpoint inside{hint}")


def use_standard_layout(model: torch.nn.Module) -> None:
    """Give every parameter contiguous memory again (undoes `gptkit.inference.decode.use_decode_layout`).

    safetensors writes only contiguous tensors, and training kernels and DDP buckets expect them.
    """
    for param in model.parameters():
        if not param.is_contiguous():
            param.data = param.data.contiguous()


def save_checkpoint(target: Path, model: GPT, tokenizer: Tokenizer, *, training_state: dict[str, Any] | None = None,
                    train_config: dict[str, Any] | None = None) -> Path:
    use_standard_layout(model)

    def write(tmp: Path) -> None:
        if hasattr(model, "write_checkpoint_files"):  # a richer kind writes its own files (gptkit.finetune.spec)
            model.write_checkpoint_files(tmp)
        else:
            model.config.save(tmp / CONFIG_FILE)
            save_safetensors_from(model, str(tmp / WEIGHTS_FILE))  # de-duplicates tied weights
        tokenizer.save(tmp)
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
        if train_config is not None:
            (tmp / TRAIN_CONFIG_FILE).write_text(json.dumps(train_config, indent=2, default=str) + "\n")

    return write_atomically(target, write)


INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(name: str) -> torch.dtype:
    """The torch dtype of an inference precision name (what `--dtype` and `LLM.load(dtype=)` take)."""
    require(name in INFERENCE_DTYPES, f"dtype must be one of {', '.join(INFERENCE_DTYPES)}, got {name!r}")
    return INFERENCE_DTYPES[name]


def load_model(path: str | Path, *, device: str | torch.device = "cpu",
               dtype: str = "float32") -> tuple[GPT, Tokenizer]:
    """Load a plain checkpoint (or a run directory's best checkpoint) for inference, its weights cast to `dtype`.

    Richer kinds (a fine-tune) load through `gptkit.api.load`, which dispatches on `checkpoint_kind`.
    """
    torch_dtype = inference_dtype(dtype)
    path = resolve_checkpoint(path)
    kind = checkpoint_kind(path)
    require(kind == "model", f"{path} is a {kind} checkpoint ({KIND_FILES.get(kind)}): load it with "
                             "gptkit.LLM.load(path) (gptkit.api.load)")
    config = ModelConfig.load(path / CONFIG_FILE)
    tokenizer = Tokenizer.from_file(path / TOKENIZER_FILE)
    require(tokenizer.vocab_size <= config.vocab_size,
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} embeddings")
    model = GPT(config)
    load_weights(model, path / WEIGHTS_FILE)
    return model.to(device=device, dtype=torch_dtype).eval(), tokenizer


def load_trained_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load what `save_checkpoint` wrote for `model` back into it (to resume training)."""
    if hasattr(model, "load_checkpoint_weights"):
        model.load_checkpoint_weights(checkpoint)
    else:
        load_weights(model, checkpoint / WEIGHTS_FILE)


def load_weights(model: GPT, weights: Path) -> None:
    try:
        missing, unexpected = load_safetensors_into(model, str(weights), strict=False)
    except SafetensorError as e:
        raise GptkitError(f"{weights} is not a readable safetensors file: {e}") from None
    except RuntimeError as e:  # shape mismatches
        raise GptkitError(f"{weights} does not fit the model in config.json: {e}") from None
    require(not missing and not unexpected,
            f"{weights} does not match config.json: missing tensors {sorted(missing)}, unexpected {sorted(unexpected)}")


def recorded_data_dir(checkpoint: Path) -> str:
    """The prepared dataset a checkpoint was trained on, as its train_config.json records it."""
    saved = Path(checkpoint) / TRAIN_CONFIG_FILE
    require(saved.is_file(), f"{checkpoint} does not record its training data; pass --data DIR|FILE")
    try:
        return json.loads(saved.read_text())["data_dir"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise GptkitError(f"{saved} does not name the training data (no data_dir); pass --data DIR|FILE") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    require(path.is_file(), f"{path} is missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for damaged files
        raise GptkitError(f"{path} is not a readable safetensors file: {e}") from None


def load_training_state(path: Path) -> dict[str, Any]:
    state_file = Path(path) / STATE_FILE
    require(state_file.is_file(), f"{path} has no {STATE_FILE}, so training cannot resume from it")
    # weights_only: never unpickle arbitrary objects from a file that may come from elsewhere.
    return torch.load(state_file, map_location="cpu", weights_only=True)
