"""Policies built on moderation: the training-data filter (`DataFilter`, `gptkit prepare --filter-moderation`), the
server's request guard (`RequestGuard`, `gptkit serve --moderation`) and the system prompt (`read_system_prompt`);
knows nothing of HTTP, of how documents are read, or of checkpoints.

    keep_out = DataFilter(Moderator(), threshold=0.5)      # prepare(..., document_filter=keep_out)
    keep_out("some text")                                   # None (keep it), or why it goes ("rule: shit (vulgarity)")
    guard = RequestGuard(Moderator(), mode="both", refusal_message="I can't help with that.")
    guard.check_input(["user text"])                        # the first flagged ModerationResult, or None
    SamplingParams(guard=guard.output_guard)                # output moderation while generating
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gptkit.errors import GptkitError, require
from gptkit.inference.text import TextGuard
from gptkit.safety.moderation import ModerationResult, Moderator

ModerationMode = Literal["none", "input", "output", "both"]
MODERATION_MODES = ("none", "input", "output", "both")


@dataclass
class DataFilter:
    """Leaves out documents whose moderation score reaches `threshold` (a rule match scores 1.0, the learned
    classifier its 1 - P(benign)); called with a document's text, it says why the document goes, or None."""

    moderator: Moderator
    threshold: float

    def __post_init__(self) -> None:
        require(0 < self.threshold <= 1, f"--filter-moderation must be a score in (0, 1], got {self.threshold}")

    @property
    def description(self) -> str:
        return f"moderation score >= {self.threshold:g} ({self.moderator.describe()})"

    def __call__(self, text: str) -> str | None:
        rules = self.moderator.rules
        match = next(iter(rules.finditer(text)), None) if rules is not None else None
        if match is not None:  # scores 1.0 whatever the classifier says: no need to run it
            return f"rule: {match.word} ({match.category})"
        if self.moderator.learned is None:
            return None
        result = self.moderator.moderate(text)[0]
        if result.score < self.threshold:
            return None
        top = max(result.category_scores, key=result.category_scores.__getitem__)
        return f"learned: {result.score:.3f} ({top})"


@dataclass
class RequestGuard:
    """What a server checks (mode: none, input, output or both) and how it answers a flagged prompt: with an error
    (refusal_message None: HTTP 400, code content_filter) or with `refusal_message` as the reply."""

    moderator: Moderator
    mode: ModerationMode = "both"
    refusal_message: str | None = None

    def __post_init__(self) -> None:
        require(self.mode in MODERATION_MODES, f"--moderation must be one of {', '.join(MODERATION_MODES)}, "
                                               f"got {self.mode!r}")

    @property
    def checks_input(self) -> bool:
        return self.mode in ("input", "both")

    @property
    def output_guard(self) -> TextGuard | None:
        """The guard generation runs with (`SamplingParams.guard`), or None when output is not moderated."""
        return self.moderator if self.mode in ("output", "both") else None

    def check_input(self, texts: Sequence[str]) -> ModerationResult | None:
        """The first flagged text's result, or None (also when input is not moderated)."""
        if not self.checks_input or not texts:
            return None
        return next((r for r in self.moderator.moderate(list(texts)) if r.flagged), None)

    def describe(self) -> str:
        if self.mode == "none":
            return "off"
        return f"{self.mode} ({self.moderator.describe()})"


def flagged_summary(result: ModerationResult) -> str:
    """What a flagged result was flagged for, in a sentence's words: "vulgarity (rule: 'shit')"."""
    categories = [c for c, on in result.categories.items() if on]
    what = ", ".join(categories) or "offensive content"
    if result.matches:
        return f"{what} (word list: {result.matches[0].word!r})"
    return f"{what} (classifier score {result.score:.2f})"


@dataclass
class LineResult:
    """One line of a file, moderated."""

    line: int
    """1-based line number."""
    result: ModerationResult
    replaced: bool
    """The line was not valid UTF-8: its invalid bytes were replaced by U+FFFD before moderating."""


def moderate_file(moderator: Moderator, path: str | Path, *, text_field: str = "text",
                  batch_size: int = 64) -> Iterator[LineResult]:
    """Moderate every non-blank line of a file: a .jsonl file's `text_field` strings, or each line of any other file
    (.txt). Lines that are not UTF-8 are decoded with replacement characters, not refused (`LineResult.replaced`)."""
    path = Path(path)
    require(path.is_file(), f"--data {path} is not a file")
    jsonl = path.suffix.lower() == ".jsonl"
    batch: list[tuple[int, str, bool]] = []

    def flush() -> Iterator[LineResult]:
        for (line, _, replaced), result in zip(batch, moderator.moderate([t for _, t, _ in batch])):
            yield LineResult(line, result, replaced)
        batch.clear()

    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text, replaced = raw.decode("utf-8"), False
            except UnicodeDecodeError:
                text, replaced = raw.decode("utf-8", errors="replace"), True
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            if jsonl:
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise GptkitError(f"{path}, line {number} is not JSON ({e.msg}); each line must be an object "
                                      f'with a "{text_field}" string') from None
                require(isinstance(record, dict) and isinstance(record.get(text_field), str),
                        f'{path}, line {number} has no "{text_field}" string; pass --text-field with the key '
                        "holding the text")
                text = record[text_field]
            batch.append((number, text, replaced))
            if len(batch) >= batch_size:
                yield from flush()
    yield from flush()


def read_system_prompt(value: str | Path | None) -> str | None:
    """`--system-prompt TEXT|FILE`: the file's text when `value` names an existing file, else `value` itself
    (None or blank: no system prompt)."""
    if value is None:
        return None
    path = Path(value)
    text = str(value)
    try:
        if len(text) < 4096 and "\n" not in text and path.is_file():
            text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        require(False, f"--system-prompt {value}: cannot read the file ({e})")
    return text.strip() or None
