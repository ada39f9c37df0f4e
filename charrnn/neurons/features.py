"""Features of a text, one number per character, to correlate with unit activations.

Each feature describes the text as the model has seen it *after reading* the
character at that position, since that is when the activation at that
position is computed. So the opening quote is already "inside quotes" and the
closing quote is not; a newline has line position 0.

Built-in features are listed in `FEATURES`; `re:PATTERN` is 1 on every
character of a match of PATTERN and 0 elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from charrnn.errors import CharRNNError

_OPEN_BRACKETS = "([{"
_CLOSE_BRACKETS = ")]}"
_OPEN_QUOTES = "“«"
_CLOSE_QUOTES = "”»"


def inside_quotes(text: str) -> np.ndarray:
    """1 from an opening double quote up to (not including) its closing quote, else 0.

    A straight quote `"` toggles; curly quotes open and close explicitly.
    """
    out = np.zeros(len(text), dtype=np.float32)
    inside = False
    for i, ch in enumerate(text):
        if ch == '"':
            inside = not inside
        elif ch in _OPEN_QUOTES:
            inside = True
        elif ch in _CLOSE_QUOTES:
            inside = False
        out[i] = inside
    return out


def line_position(text: str) -> np.ndarray:
    """Characters read since the last newline: 0 on a newline, 1 on a line's first character."""
    out = np.zeros(len(text), dtype=np.float32)
    pos = 0
    for i, ch in enumerate(text):
        pos = 0 if ch == "\n" else pos + 1
        out[i] = pos
    return out


def bracket_depth(text: str) -> np.ndarray:
    """Nesting depth of (), [] and {} after each character; a stray closer does not go below 0."""
    out = np.zeros(len(text), dtype=np.float32)
    depth = 0
    for i, ch in enumerate(text):
        if ch in _OPEN_BRACKETS:
            depth += 1
        elif ch in _CLOSE_BRACKETS:
            depth = max(depth - 1, 0)
        out[i] = depth
    return out


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def inside_word(text: str) -> np.ndarray:
    """1 on letters, digits and underscores, 0 elsewhere."""
    return np.fromiter((_is_word_char(ch) for ch in text), dtype=np.float32, count=len(text))


def word_position(text: str) -> np.ndarray:
    """Position of the character within its word (1 = first letter), 0 outside words."""
    out = np.zeros(len(text), dtype=np.float32)
    pos = 0
    for i, ch in enumerate(text):
        pos = pos + 1 if _is_word_char(ch) else 0
        out[i] = pos
    return out


def after_newline(text: str) -> np.ndarray:
    """1 where the model has just read a newline (the next character starts a line), else 0."""
    return np.fromiter((ch == "\n" for ch in text), dtype=np.float32, count=len(text))


FEATURES: dict[str, Callable[[str], np.ndarray]] = {
    "inside-quotes": inside_quotes,
    "line-position": line_position,
    "bracket-depth": bracket_depth,
    "inside-word": inside_word,
    "word-position": word_position,
    "after-newline": after_newline,
}


def regex_feature(text: str, pattern: str) -> np.ndarray:
    """1 on each character inside a match of `pattern`, 0 elsewhere. Raises CharRNNError."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise CharRNNError(f"invalid regular expression '{pattern}': {exc}.")
    out = np.zeros(len(text), dtype=np.float32)
    for match in compiled.finditer(text):
        out[match.start() : match.end()] = 1.0
    return out


def compute_feature(text: str, name: str) -> np.ndarray:
    """The feature `name` (a key of FEATURES or 're:PATTERN') of `text` -> (N,) float32.

    Raises CharRNNError for an unknown name or an invalid pattern.
    """
    if name.startswith("re:"):
        if not name[3:]:
            raise CharRNNError("the feature 're:' needs a pattern, e.g. 're:[A-Z]+'.")
        return regex_feature(text, name[3:])
    if name not in FEATURES:
        raise CharRNNError(f"unknown feature '{name}': choose one of {', '.join(FEATURES)}, or 're:PATTERN'.")
    return FEATURES[name](text)


def compute_features(text: str, names: list[str]) -> np.ndarray:
    """Several features of `text` -> (N, F) float32, columns in the order of `names`."""
    columns = [compute_feature(text, name) for name in names]
    return np.stack(columns, axis=1) if columns else np.zeros((len(text), 0), np.float32)
