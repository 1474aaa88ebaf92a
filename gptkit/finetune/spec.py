"""A fine-tuned checkpoint: its spec file (finetune.json), the model it describes, and its loader.

A fine-tuned checkpoint directory holds `finetune.json` (task, method, labels, the base checkpoint's
path), `config.json` and `tokenizer.json`, and then either
  - `model.safetensors`, all weights (full and freeze: a standalone checkpoint), or
  - `adapter/` (lora, adapter, adalora: `adapter_config.json` + `adapter_model.safetensors`, only the
    trained tensors, a few hundred KB; the base checkpoint supplies the rest),
plus `head.safetensors` for classification. `gptkit.api.load` dispatches such a directory here.
Knows nothing of training: `gptkit.finetune.job` trains what this module describes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from safetensors.torch import save_file

from gptkit.adapt.files import load_adapter, peft_state_dict, save_adapter
from gptkit.adapt.peft import merge_peft, peft_state
from gptkit.checkpoint import (CONFIG_FILE, FINETUNE_FILE, TOKENIZER_FILE, WEIGHTS_FILE, checkpoint_kind, load_model,
                               load_weights, read_safetensors, resolve_checkpoint, use_standard_layout)
from gptkit.config import ModelConfig
from gptkit.data.labelled import encode_for_classification
from gptkit.errors import GptkitError, require
from gptkit.models.gpt import GPT, unshared_state
from gptkit.models.heads import SentenceEmbedder, SequenceClassifier, predict_proba
from gptkit.tokenizer import Tokenizer

HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"
ADAPTER_METHODS = ("lora", "adapter", "adalora")

TaskName = Literal["classify", "sft", "lm", "multimodal", "embed"]


@dataclass
class FinetuneSpec:
    """What a fine-tuned checkpoint is: saved as finetune.json."""

    task: TaskName
    method: str
    base: str
    """The base checkpoint directory (absolute), which adapter checkpoints need at load time."""
    labels: list[str] | None = None
    pooling: str = "last"
    max_length: int | None = None
    """Classification and embeddings: tokens kept per text (default: the model's context length)."""
    text_style: str = "raw"
    """Embeddings: how a text is written before it is tokenised (`gptkit.data.moderation_data.TEXT_STYLES`), as in
    training; `LLM.embed` applies it."""

    @classmethod
    def load(cls, path: Path) -> "FinetuneSpec":
        try:
            data = json.loads((path / FINETUNE_FILE).read_text())
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise GptkitError(f"{path / FINETUNE_FILE} is not a valid fine-tuning record: {e}") from None


class FineTuned(nn.Module):
    """What fine-tuning trains and saves: the base GPT with a method applied, and for `classify` a head.

    It knows how to write and read its own checkpoint files (`write_checkpoint_files`,
    `load_checkpoint_weights`), which `gptkit.checkpoint` calls, so the training loop saves and
    resumes it like any model.
    """

    def __init__(self, gpt: GPT, spec: FinetuneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.config = gpt.config
        self.body: nn.Module = gpt
        if spec.task == "classify":
            self.body = SequenceClassifier(gpt, spec.labels or [], spec.pooling)  # type: ignore[arg-type]
        elif spec.task == "embed":
            self.body = SentenceEmbedder(gpt, spec.pooling)  # type: ignore[arg-type]

    @property
    def gpt(self) -> GPT:
        return self.body.gpt if isinstance(self.body, (SequenceClassifier, SentenceEmbedder)) \
            else self.body  # type: ignore[return-value]

    @property
    def classifier(self) -> SequenceClassifier | None:
        return self.body if isinstance(self.body, SequenceClassifier) else None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.body(*args, **kwargs)

    # --- checkpoint files ----------------------------------------------------------------------
    def write_checkpoint_files(self, directory: Path) -> None:
        use_standard_layout(self)
        self.config.save(directory / CONFIG_FILE)
        (directory / FINETUNE_FILE).write_text(json.dumps(asdict(self.spec), indent=2) + "\n")
        state = peft_state(self.gpt)
        if self.spec.method in ADAPTER_METHODS:
            assert state is not None
            save_adapter(self.gpt, state.config, directory / ADAPTER_DIR, self.spec.base)
        else:
            save_file(unshared_state(self.gpt.state_dict()), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        if self.classifier is not None:
            save_file({k: v.contiguous() for k, v in self.classifier.head.state_dict().items()},
                      str(directory / HEAD_FILE), metadata={"format": "pt"})

    def load_checkpoint_weights(self, directory: Path) -> None:
        """Load the trained tensors of a checkpoint written by `write_checkpoint_files` (to resume)."""
        if self.spec.method in ADAPTER_METHODS:
            tensors = read_safetensors(directory / ADAPTER_DIR / "adapter_model.safetensors")
            targets = peft_state_dict(self.gpt)
            require(set(tensors) == set(targets), f"{directory}: adapter tensors do not match this model")
            with torch.no_grad():
                for name, target in targets.items():
                    target.copy_(tensors[name])
        else:
            load_weights(self.gpt, directory / WEIGHTS_FILE)
        if self.classifier is not None:
            self.classifier.head.load_state_dict(read_safetensors(directory / HEAD_FILE))


def is_finetuned(path: Path) -> bool:
    return (Path(path) / FINETUNE_FILE).is_file()


def load_finetuned(path: Path, *, base: str | Path | None = None, device: str | torch.device = "cpu",
                   merge: bool = True) -> tuple[FineTuned, Tokenizer]:
    """A fine-tuned checkpoint, ready for inference. `base` overrides the recorded base checkpoint path.

    `merge`: fold LoRA/AdaLoRA updates into the weights (same outputs, no extra cost per token).
    """
    path = Path(path)
    spec = FinetuneSpec.load(path)
    tokenizer = Tokenizer.from_file(path / TOKENIZER_FILE)
    if spec.method in ADAPTER_METHODS:
        base_dir = Path(base or spec.base)
        require(base_dir.exists(), f"{path} is an adapter on the base checkpoint {base_dir}, which does not exist; "
                                   "pass the base's new location (LLM.load(dir, base=...) or --base)")
        gpt, _ = load_language_model(base_dir)
        load_adapter(gpt, path / ADAPTER_DIR)
        if merge and spec.method != "adapter":
            merge_peft(gpt)
    else:
        gpt = GPT(ModelConfig.load(path / CONFIG_FILE))
        load_weights(gpt, path / WEIGHTS_FILE)
    model = FineTuned(gpt, spec)
    if model.classifier is not None:
        model.classifier.head.load_state_dict(read_safetensors(path / HEAD_FILE))
    return model.to(device).eval(), tokenizer


def load_language_model(path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> tuple[GPT, Tokenizer]:
    """A checkpoint as the GPT it amounts to: a plain one, or a language-model fine-tune (task lm or
    sft; an adapter one on its base). A classification fine-tune is an error that says what to use."""
    path = resolve_checkpoint(path)
    require(checkpoint_kind(path) != "quantized", f"{path} is a quantized checkpoint (for inference): train, "
                                                  "fine-tune or attach adapters to the float checkpoint it was made "
                                                  "from, then quantize the result with `gptkit quantize`")
    if not is_finetuned(path):
        return load_model(path, device=device, dtype=str(dtype).removeprefix("torch."))
    finetuned, tokenizer = load_finetuned(path, device=device)
    require(finetuned.classifier is None, f"{path} is a classification model (it predicts labels, not text); "
                                          "use LLM.load(path).classify(texts) or `gptkit classify`")
    return finetuned.gpt.to(dtype), tokenizer


def attach_adapter(gpt: GPT, adapter: str | Path) -> GPT:
    """Put a saved adapter on `gpt`: an adapter directory, or a fine-tuned checkpoint holding one."""
    adapter = Path(adapter)
    require(adapter.exists(), f"adapter {adapter} does not exist")
    if (adapter / ADAPTER_DIR).is_dir():
        adapter = adapter / ADAPTER_DIR
    load_adapter(gpt, adapter)
    return gpt


def predict_labels(model: FineTuned, tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """Label probabilities (N, num_labels) of a classification model."""
    assert model.classifier is not None
    rows = encode_for_classification(tokenizer, texts, model.spec.max_length or model.config.block_size)
    return predict_proba(model.classifier, rows, device=next(model.parameters()).device)
