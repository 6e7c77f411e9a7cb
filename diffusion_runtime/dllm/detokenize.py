"""From decoded blocks of token ids to streamed text: incremental detokenization and stop strings.

Text is emitted only once it can no longer change or be taken back: a trailing incomplete UTF-8 sequence
(byte-level tokenizers decode half a character as U+FFFD) waits for the next block, and so does a tail that
could be the beginning of a stop string. So the concatenated deltas equal the final text exactly, and text
from a stop string on is never emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_REPLACEMENT = "\ufffd"


class AnswerText:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded text already handed out
        self.stopped = False  # a stop string was found: the answer ends before it
        self.tokens_to_stop = 0  # tokens up to the one that completed the stop string

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _held_back(self, text: str) -> int:
        """How many trailing characters might still change or start a stop string."""
        held = len(text) - len(text.rstrip(_REPLACEMENT))
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text) - self._emitted), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

    def _tokens_covering(self, chars: int, first: int) -> int:
        """The fewest tokens (at least ``first + 1``) whose text reaches ``chars`` characters."""
        for count in range(first + 1, len(self._ids) + 1):
            if len(self._decode(self._ids[:count])) >= chars:
                return count
        return len(self._ids)

    def add(self, token_ids: Sequence[int], final: bool) -> str:
        """Append a block; return the text that is now safe to emit. ``final``: no block follows."""
        if self.stopped:
            return ""
        first = len(self._ids)
        self._ids.extend(token_ids)
        text = self._decode(self._ids)
        hits = [(i, stop) for stop in self._stop if (i := text.find(stop, self._emitted)) >= 0]
        if hits:
            index, stop = min(hits)
            self.stopped = True
            self.tokens_to_stop = self._tokens_covering(index + len(stop), first)
            end = index
        else:
            end = len(text) if final else len(text) - self._held_back(text)
        delta = text[self._emitted : max(end, self._emitted)]
        self._emitted = max(end, self._emitted)
        return delta

    @property
    def token_count(self) -> int:
        return len(self._ids)
