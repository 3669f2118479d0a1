"""The one base exception of the explanation package."""

from __future__ import annotations


class ExplainError(Exception):
    """An explanation could not be made for this model or image (not a caller's mistake).

    Wrong arguments (an unknown method, label or layer) raise :class:`ValueError` instead.
    """
