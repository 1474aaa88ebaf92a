"""Token ids to text as they arrive, with stop strings found across token boundaries; knows nothing of models."""

from __future__ import annotations

from collections.abc import Sequence

from gptkit.tokenizer import StreamDecoder, Tokenizer


class IncrementalText:
    """The text of a growing list of tokens, cut before the first stop string.

    Stop strings are matched on text, not tokens, so one split across tokens, or starting in the
    middle of a token, is still found. `take()` returns the text that is safe to show: it holds
    back a tail that could still become a stop string (e.g. "Hel" while "Hello" is a stop string).
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.decoder = StreamDecoder(tokenizer, skip_special_tokens=True)
        self.stop = list(stop)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.stopped = False  # a stop string was found; text ends right before it
        self.shown = 0  # characters of `text` already returned by take()

    def push(self, token_id: int) -> None:
        self._append(self.decoder.push(token_id))

    def flush(self) -> None:
        """Add whatever the decoder still holds back (an incomplete character at the very end)."""
        if not self.stopped:
            self._append(self.decoder.flush())

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
        piece = self.text[self.shown:max(end, self.shown)]
        self.shown += len(piece)
        return piece
