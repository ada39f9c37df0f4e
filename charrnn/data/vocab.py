"""Vocab: the sorted set of symbols of a corpus, and the map between text and ids.

Symbols are Unicode code points (never split into bytes). For `--encoding bytes`
the symbols are the 256 byte values, held as the code points U+0000..U+00FF
(the latin-1 mapping), so all code paths stay the same.

A capped vocabulary (`--max-vocab N`, `capped_vocab`) keeps the N most frequent symbols
of the corpus (ties: the lower code point first) and adds UNKNOWN, U+FFFD REPLACEMENT
CHARACTER, which stands for every other symbol: encoding maps them to it, sampling never
draws it (charrnn.sample.draw masks its logit). U+FFFD in the corpus itself is counted as
UNKNOWN, never as one of the N kept symbols: it means "a character that is not here" in
Unicode too. UNKNOWN is also allowed in a byte-level vocabulary, where it is the only
symbol above U+00FF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from charrnn.errors import CharRNNError


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]  # sorted by code point, each one code point
    byte_level: bool = False
    max_vocab: int = 0  # the cap it was built with (UNKNOWN is then one of chars); 0 = no cap
    _index: dict[str, int] = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def unknown_id(self) -> int | None:
        """The id of UNKNOWN when the vocabulary is capped, else None."""
        return self._index.get(UNKNOWN) if self.max_vocab else None

    def mask_unknown(self, logits: np.ndarray) -> np.ndarray:
        """`logits` (..., V) with UNKNOWN's set to -inf (a copy), so that sampling never draws
        it; `logits` itself when the vocabulary has no UNKNOWN."""
        if self.unknown_id is None:
            return logits
        masked = np.array(logits, dtype=np.result_type(logits, np.float32))
        masked[..., self.unknown_id] = -np.inf
        return masked

    @property
    def codepoints(self) -> np.ndarray:
        return np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def missing(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self._index))

    def encode(self, text: str) -> list[int]:
        """Text -> ids. A capped vocabulary maps characters outside it to UNKNOWN; any other
        raises CharRNNError listing them."""
        unknown_id = self.unknown_id
        if unknown_id is not None:
            return [self._index.get(c, unknown_id) for c in text]
        unknown = self.missing(text)
        if unknown:
            raise unknown_error(unknown, "remove them or train on a corpus that has them.")
        return [self._index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        capped = {"max_vocab": self.max_vocab} if self.max_vocab else {}  # absent: as before the cap existed
        return {"chars": "".join(self.chars), "byte_level": self.byte_level, **capped}

    @classmethod
    def from_dict(cls, data: Any) -> "Vocab":
        """The vocabulary stored by `to_dict`. Raises CharRNNError for anything else: a
        checkpoint or a cache file is untrusted input."""
        if not isinstance(data, dict) or set(data) - {"chars", "byte_level", "max_vocab"}:
            raise CharRNNError(
                "the stored vocabulary is damaged: expected {chars, byte_level, max_vocab}; "
                "retrain or re-prepare the corpus."
            )
        chars, byte_level, cap = data.get("chars"), data.get("byte_level", False), data.get("max_vocab", 0)
        if not isinstance(chars, str) or not isinstance(byte_level, bool):
            raise CharRNNError("the stored vocabulary is damaged: chars must be a string and byte_level true or false.")
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            raise CharRNNError("the stored vocabulary is damaged: max_vocab must be 0 or a positive integer.")
        if cap and (UNKNOWN not in chars or len(chars) > cap + 1):
            raise CharRNNError(
                f"the stored vocabulary is damaged: a vocabulary capped at {cap} holds U+FFFD and at most {cap} more."
            )
        symbols = chars.replace(UNKNOWN, "") if cap else chars
        if not chars or len(set(chars)) != len(chars) or (byte_level and symbols and max(symbols) > "\xff"):
            raise CharRNNError(
                "the stored vocabulary is damaged: its symbols must be distinct, at least one, "
                "and bytes (U+0000..U+00FF) when byte-level."
            )
        return cls(tuple(chars), byte_level, cap)


def unknown_error(unknown: list[str], hint: str) -> CharRNNError:
    """The error for characters outside a vocabulary: lists up to 20 of them, then `hint`."""
    shown = ", ".join(repr(c) for c in unknown[:20])
    more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
    return CharRNNError(f"{len(unknown)} character(s) are not in the model's vocabulary: {shown}{more}; {hint}")


UNKNOWN = "\ufffd"  # stands for every symbol a capped vocabulary leaves out


def capped_vocab(counts: np.ndarray, max_vocab: int, byte_level: bool = False) -> Vocab:
    """The `max_vocab` most frequent symbols plus UNKNOWN, from `counts` (occurrences indexed by
    code point). Ties keep the lower code point; UNKNOWN's own count never takes a place."""
    if max_vocab < 1:
        raise CharRNNError(f"--max-vocab must be at least 1, not {max_vocab}.")
    counts = np.asarray(counts)
    present = np.flatnonzero(counts)
    present = present[present != ord(UNKNOWN)]
    # A stable sort by descending count keeps ascending code points within a tie.
    kept = present[np.argsort(-counts[present], kind="stable")[:max_vocab]]
    return Vocab(tuple(sorted({chr(int(c)) for c in kept} | {UNKNOWN})), byte_level, max_vocab)


def build_vocab(text: str, byte_level: bool = False) -> Vocab:
    return Vocab(tuple(sorted(set(text))), byte_level)


def vocab_from_codepoints(codepoints: Iterable[int], byte_level: bool = False) -> Vocab:
    return Vocab(tuple(chr(int(c)) for c in sorted(set(int(c) for c in codepoints))), byte_level)


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned integer type that holds ids below vocab_size."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise CharRNNError("vocabulary too large.")  # cannot happen: Unicode has < 2**21 points
