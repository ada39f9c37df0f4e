"""Vocab: the sorted set of symbols of a corpus, and the map between text and ids.

Symbols are Unicode code points (never split into bytes). For `--encoding bytes`
the symbols are the 256 byte values, held as the code points U+0000..U+00FF
(the latin-1 mapping), so all code paths stay the same.
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
    _index: dict[str, int] = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def codepoints(self) -> np.ndarray:
        return np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def missing(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, sorted."""
        return sorted(set(text) - set(self._index))

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Raises CharRNNError listing characters outside the vocabulary."""
        unknown = self.missing(text)
        if unknown:
            raise unknown_error(unknown, "remove them or train on a corpus that has them.")
        return [self._index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars), "byte_level": self.byte_level}

    @classmethod
    def from_dict(cls, data: Any) -> "Vocab":
        """The vocabulary stored by `to_dict`. Raises CharRNNError for anything else: a
        checkpoint or a cache file is untrusted input."""
        if not isinstance(data, dict) or set(data) - {"chars", "byte_level"}:
            raise CharRNNError(
                "the stored vocabulary is damaged: expected {chars, byte_level}; retrain or re-prepare the corpus."
            )
        chars, byte_level = data.get("chars"), data.get("byte_level", False)
        if not isinstance(chars, str) or not isinstance(byte_level, bool):
            raise CharRNNError("the stored vocabulary is damaged: chars must be a string and byte_level true or false.")
        if not chars or len(set(chars)) != len(chars) or (byte_level and max(chars) > "\xff"):
            raise CharRNNError(
                "the stored vocabulary is damaged: its symbols must be distinct, at least one, "
                "and bytes (U+0000..U+00FF) when byte-level."
            )
        return cls(tuple(chars), byte_level)


def unknown_error(unknown: list[str], hint: str) -> CharRNNError:
    """The error for characters outside a vocabulary: lists up to 20 of them, then `hint`."""
    shown = ", ".join(repr(c) for c in unknown[:20])
    more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
    return CharRNNError(f"{len(unknown)} character(s) are not in the model's vocabulary: {shown}{more}; {hint}")


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
