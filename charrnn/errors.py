"""The one exception users see: CharRNNError, turned into `error: ...` and exit 1 by the CLI."""


class CharRNNError(Exception):
    """A problem the user can fix: bad input, missing file, unusable checkpoint."""
