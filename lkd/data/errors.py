"""The error of text-classification data that is not what the module was told, and the "did you mean" its
messages carry."""

from __future__ import annotations

import difflib


class TextDataError(ValueError):
    """The text-classification data is not what the module was told (columns, labels, splits)."""


def near(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
