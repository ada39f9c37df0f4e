"""The exact rule of each built-in text feature, in words: shown by `charrnn cells --help` and
written out in docs/features.md. No imports, so the command line can list them without numpy.

charrnn.neurons.features computes the features; its FEATURES table has the same names in the
same order (a test checks it).
"""

FEATURE_RULES: dict[str, str] = {
    "inside-quotes": (
        "1 from an opening quote mark up to (not including) its closing mark, else 0. “ and « open, "
        "” and » close a double quotation; ‘ opens a single one and ’ closes it when one is open. "
        "A straight \" or ' opens after a space, a line start, a bracket, a dash or another quote "
        'mark, and closes before a space, punctuation or another quote mark; an unclear " toggles, '
        "an unclear ' is ignored. ' or ’ between two letters or digits (don't) is an apostrophe, "
        "never a quote mark. Every quotation ends at a paragraph break (a blank line, CRLF or "
        "not), so one that runs on into the next paragraph, reopened there, stays right."
    ),
    "line-position": (
        "characters read since the last newline: 0 on the newline, 1 on a line's first character; "
        "a \\r (of CRLF) keeps the position of the character before it."
    ),
    "bracket-depth": (
        "nesting depth of ( [ { after each character; a closer without an opener does not go "
        "below 0, and depth carries across lines and paragraphs."
    ),
    "inside-word": ("1 on letters, digits and _, and on an apostrophe (' or ’) between two of them (don't), else 0."),
    "word-position": "position within the word of inside-word (1 = first character), 0 outside words.",
    "after-newline": "1 on a newline (\\n: the next character starts a line), else 0.",
}
