"""What makes a classification checkpoint a learned moderator: its spec file (moderation.json, `ModerationSpec`);
knows nothing of training (`gptkit.finetune.moderation_job` writes it) or of how text is moderated
(`gptkit.safety.moderation`, which `gptkit.api.load_moderator` hands the classifier and this spec to).

    gptkit moderate --train --checkpoint out/pretrain/base-mix --out out/moderation
    # the same as: gptkit finetune --task classify --checkpoint BASE --out out/moderation --data D/train.jsonl
    #   --val-data D/val.jsonl --test-data D/test.jsonl   (D from gptkit.data.moderation_data.write_moderation_splits)
    # then a threshold calibrated on the validation split, written to out/moderation/best/moderation.json

A learned moderator is a `gptkit finetune --task classify` checkpoint whose labels are a benign one ("none") and
categories, with moderation.json beside its finetune.json: the flagging threshold on 1 - P(benign), how its input
text is written, the chunk size for long texts, and how the threshold was calibrated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gptkit.data.moderation_data import BENIGN_LABEL, TEXT_STYLES
from gptkit.errors import GptkitError, require

MODERATION_FILE = "moderation.json"


@dataclass
class ModerationSpec:
    """What makes a classification checkpoint a moderator: saved as moderation.json beside its finetune.json."""

    threshold: float
    """Flag text when 1 - P(benign_label) reaches this."""
    benign_label: str = BENIGN_LABEL
    text_style: str = "raw"
    """How texts are written before the classifier reads them (`gptkit.data.moderation_data.TEXT_STYLES`)."""
    chunk_chars: int = 400
    """Longer texts are scored in chunks of about this many characters (the worst chunk counts)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """How the threshold was chosen: the rule and the validation figures at it."""

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MODERATION_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> "ModerationSpec":
        path = Path(directory) / MODERATION_FILE
        try:
            spec = cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise GptkitError(f"{path} is not a valid moderation record: {e}") from None
        require(spec.text_style in TEXT_STYLES, f"{path}: unknown text_style {spec.text_style!r}")
        return spec


def is_moderator(path: str | Path) -> bool:
    """Whether a checkpoint directory holds a learned moderator (its moderation.json)."""
    return (Path(path) / MODERATION_FILE).is_file()
