"""Features of a text, one number per character, to correlate with unit activations.

Each feature describes the text as the model has seen it *after reading* the
character at that position, since that is when the activation at that
position is computed. So the opening quote is already "inside quotes" and the
closing quote is not; a newline has line position 0.

Built-in features are listed in `FEATURES`, each with its exact rule in words in
charrnn.neurons.feature_rules (and docs/features.md); `re:PATTERN` is 1 on every
character of a match of PATTERN and 0 elsewhere. Texts arrive as training reads
them (charrnn.data.corpus.read_text), so CRLF line ends keep their \\r: every rule
here treats a \\r as part of the line end. The features are computed with array
operations over the whole text (a 3 MB book takes about a second), apart from
the quote scan, which visits only quote marks and newlines.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.neurons.feature_rules import FEATURE_RULES

_OPEN_BRACKETS = "([{"
_CLOSE_BRACKETS = ")]}"
# Curly double quotes and guillemets name their direction; straight ones depend on context.
_OPEN_DOUBLE = "“«"
_CLOSE_DOUBLE = "”»"
_APOSTROPHES = "'’"  # inside a word these are apostrophes (don't, don’t), never quote marks
_QUOTE_MARKS = '"' + "'" + "‘’" + _OPEN_DOUBLE + _CLOSE_DOUBLE
# A straight quote after one of these (or a space or the start) opens; before one of these
# (or a space or the end) it closes.
_BEFORE_OPENING = "([{<—–-" + "“‘«" + "\"'"
_AFTER_CLOSING = ".,;:!?)]}>—–-" + "”’»" + "\"'"
_PARAGRAPH_SEPARATOR = "\u2029"


def _codes(text: str) -> np.ndarray:
    """(N,) uint32 code points of text."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _char_class(codes: np.ndarray, test: Callable[[str], bool]) -> np.ndarray:
    """(N,) bool: test(ch) for every character, evaluated once per distinct character."""
    if len(codes) == 0:
        return np.zeros(0, dtype=bool)
    distinct, inverse = np.unique(codes, return_inverse=True)
    table = np.fromiter((test(chr(c)) for c in distinct), dtype=bool, count=len(distinct))
    return table[inverse.reshape(-1)]


def _paragraph_breaks(text: str, codes: np.ndarray) -> np.ndarray:
    """Positions that end a paragraph: each \\n ending a blank or whitespace-only line
    (so \\n\\n and \\r\\n\\r\\n), and each U+2029."""
    newlines = np.flatnonzero(codes == 10)
    visible = np.cumsum(~_char_class(codes, str.isspace))  # visible characters up to each position
    before = np.concatenate([[0], visible[newlines[:-1]]]) if len(newlines) else newlines
    blank = newlines[visible[newlines] == before] if len(newlines) else newlines
    separators = np.flatnonzero(codes == ord(_PARAGRAPH_SEPARATOR))
    return np.union1d(blank, separators)


def _straight_direction(text: str, i: int) -> str:
    """'open', 'close' or '' (unclear) for a straight quote at i, from the characters around it."""
    prev = text[i - 1] if i > 0 else " "
    nxt = text[i + 1] if i + 1 < len(text) else " "
    opens = prev.isspace() or prev in _BEFORE_OPENING
    closes = nxt.isspace() or nxt in _AFTER_CLOSING
    if opens != closes:
        return "open" if opens else "close"
    return ""


def _close(stack: list[str], kind: str) -> None:
    """Close the innermost open quotation of kind ('d' double, 's' single) and any inside it."""
    if kind in stack:
        del stack[len(stack) - 1 - stack[::-1].index(kind) :]


def inside_quotes(text: str) -> np.ndarray:
    """1 from an opening quote mark up to (not including) its closing mark, else 0.

    The rule, mark by mark (see FEATURE_RULES['inside-quotes']): “ « open and ” » close a
    double quotation; ‘ opens a single one and ’ closes it when one is open; an apostrophe
    between letters or digits (don't, don’t, O'Brien) is never a quote mark. A straight " or '
    opens after a space, a line start, a bracket or another quote mark, and closes before a
    space or punctuation; an unclear straight " toggles, an unclear ' is ignored. Straight
    doubles do not nest (a second opening one replaces the first). Every quotation ends at a
    paragraph break, which is how a quotation running on into the next paragraph (reopened
    there without being closed) stays right for the rest of the book.
    """
    n = len(text)
    out = np.zeros(n, dtype=np.float32)
    codes = _codes(text)
    marks = np.flatnonzero(np.isin(codes, [ord(c) for c in _QUOTE_MARKS]))
    breaks = _paragraph_breaks(text, codes)
    events = np.concatenate([marks, breaks])
    order = np.argsort(events, kind="stable")
    events, is_break = events[order], (np.arange(len(events)) >= len(marks))[order]
    stack: list[str] = []  # open quotations, innermost last: 'd' double, 's' single
    for j, i in enumerate(events.tolist()):
        ch = text[i]
        if is_break[j]:
            stack.clear()
        elif ch in _APOSTROPHES and 0 < i < n - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
            pass  # an apostrophe inside a word
        elif ch in _OPEN_DOUBLE:
            stack.append("d")
        elif ch in _CLOSE_DOUBLE:
            _close(stack, "d")
        elif ch == "‘":
            stack.append("s")
        elif ch == "’":
            _close(stack, "s")  # with no single quotation open it is an apostrophe (goin’, boys’)
        elif ch == '"':
            direction = _straight_direction(text, i) or ("close" if "d" in stack else "open")
            _close(stack, "d")
            if direction == "open":
                stack.append("d")
        else:  # straight single quote
            direction = _straight_direction(text, i)
            if direction == "open":
                stack.append("s")
            elif direction == "close":
                _close(stack, "s")
        end = int(events[j + 1]) if j + 1 < len(events) else n
        out[i:end] = 1.0 if stack else 0.0
    return out


def line_position(text: str) -> np.ndarray:
    """Characters read since the last newline: 0 on a newline, 1 on a line's first character;
    a \\r keeps the position of the character before it."""
    codes = _codes(text)
    newline = codes == 10
    counted = np.cumsum(~newline & (codes != 13))
    last = np.maximum.accumulate(np.where(newline, np.arange(len(codes)), -1)) if len(codes) else codes
    base = np.where(last >= 0, counted[np.maximum(last, 0)], 0)
    return (counted - base).astype(np.float32)


def bracket_depth(text: str) -> np.ndarray:
    """Nesting depth of (), [] and {} after each character; a stray closer does not go below 0."""
    codes = _codes(text)
    step = np.isin(codes, [ord(c) for c in _OPEN_BRACKETS]).astype(np.int64)
    step -= np.isin(codes, [ord(c) for c in _CLOSE_BRACKETS])
    walk = np.cumsum(step)
    # A walk held at 0 from below is the free walk minus its lowest point so far (when negative).
    floor = np.minimum(np.minimum.accumulate(walk), 0) if len(walk) else walk
    return (walk - floor).astype(np.float32)


def _word_mask(text: str) -> np.ndarray:
    codes = _codes(text)
    word = _char_class(codes, lambda ch: ch.isalnum() or ch == "_")
    if len(codes) > 2:  # an apostrophe between two word characters joins them (don't)
        apostrophe = np.isin(codes[1:-1], [ord(c) for c in _APOSTROPHES])
        word[1:-1] |= apostrophe & word[:-2] & word[2:]
    return word


def inside_word(text: str) -> np.ndarray:
    """1 on letters, digits and underscores, and on an apostrophe between two of them; else 0."""
    return _word_mask(text).astype(np.float32)


def word_position(text: str) -> np.ndarray:
    """Position of the character within its word (1 = first letter), 0 outside words."""
    word = _word_mask(text)
    index = np.arange(len(word))
    last_gap = np.maximum.accumulate(np.where(word, -1, index)) if len(word) else index
    return np.where(word, index - last_gap, 0).astype(np.float32)


def after_newline(text: str) -> np.ndarray:
    """1 where the model has just read a newline (the next character starts a line), else 0."""
    return (_codes(text) == 10).astype(np.float32)


FEATURES: dict[str, Callable[[str], np.ndarray]] = {
    "inside-quotes": inside_quotes,
    "line-position": line_position,
    "bracket-depth": bracket_depth,
    "inside-word": inside_word,
    "word-position": word_position,
    "after-newline": after_newline,
}
assert list(FEATURES) == list(FEATURE_RULES), "every built-in feature has its rule in feature_rules.py"


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
