"""Token ids to text as they arrive, with stop strings found across token boundaries and an optional guard over the
text (output moderation); knows nothing of models, nor of what a guard looks for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gptkit.tokenizer import StreamDecoder, Tokenizer


class TextWatch(Protocol):
    """One completion's watcher (made by `TextGuard.watch`), called each time its text grows."""

    def check(self, text: str, final: bool) -> tuple[int | None, int]:
        """(cut, safe) for the text so far: `cut` is where a flagged span starts (the text ends there and the
        completion with finish_reason "content_filter"), None when nothing is flagged; `safe` is how much of the
        text is cleared for showing (the rest could still turn out flagged as more arrives). With `final`, no
        more text comes: everything not cut is cleared."""
        ...


class TextGuard(Protocol):
    """Checks generated text as it is produced, e.g. `gptkit.safety.moderation.Moderator` (output moderation)."""

    def watch(self) -> TextWatch:
        """A fresh watcher for one completion (it may keep state between calls)."""
        ...


class IncrementalText:
    """The text of a growing list of tokens, cut before the first stop string.

    Stop strings are matched on text, not tokens, so one split across tokens, or starting in the
    middle of a token, is still found. `take()` returns the text that is safe to show: it holds
    back a tail that could still become a stop string (e.g. "Hel" while "Hello" is a stop string).

    A `guard` (output moderation) sees the text each time it grows, after the stop strings: a span it
    flags ends the text where the span starts (`filtered`), and `take()` also holds back what it has not
    cleared yet, so a stream never shows a flagged span.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = (), guard: TextGuard | None = None) -> None:
        self.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
        self.stop = list(stop)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.stopped = False  # a stop string was found (or the guard flagged a span); text ends right before it
        self.filtered = False  # the guard flagged a span
        self.shown = 0  # characters of `text` already returned by take()
        self.watch = guard.watch() if guard is not None else None
        self.cleared = 0  # characters of `text` the guard has cleared
        self.judged = False  # the guard has seen the final text

    def push(self, token_id: int) -> None:
        self._append(self.decoder.push(token_id))
        self._check(final=False)

    def flush(self) -> None:
        """Add whatever the decoder still holds back (an incomplete character at the very end)."""
        if not self.stopped:
            self._append(self.decoder.flush())
        self._check(final=True)

    def _check(self, final: bool) -> None:
        final = final or self.stopped
        if self.watch is None or self.filtered or self.cleared == len(self.text) and (not final or self.judged):
            return
        self.judged = final
        cut, safe = self.watch.check(self.text, final)
        if cut is not None:
            self.text = self.text[:max(cut, self.shown)]
            self.stopped = self.filtered = True
            safe = len(self.text)
        self.cleared = max(self.cleared, min(safe, len(self.text)))

    def _append(self, piece: str) -> None:
        if self.stopped or not piece:
            return
        # A new match must end inside the new piece, so only the last longest_stop-1 old characters
        # need searching again.
        start = max(0, len(self.text) - self.longest_stop + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        for n in range(min(len(self.text), self.longest_stop - 1), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def take(self, *, final: bool = False) -> str:
        """Text not returned before; with final=True (or after a stop), everything that is left."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        if self.watch is not None and not self.filtered:
            end = min(end, self.cleared)
        piece = self.text[self.shown:max(end, self.shown)]
        self.shown += len(piece)
        return piece
