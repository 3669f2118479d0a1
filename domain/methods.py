"""The explanation methods the node offers, named once for every front (settings, CLI, HTTP,
Azure): light enough to import where a command line is parsed (no torch)."""

from __future__ import annotations

from typing import Literal

#: Methods a front may ask for; ``explain`` implements these (and a few more for research).
SERVED_METHODS: tuple[str, ...] = ("gradcam", "gradcampp", "shap")
#: What ``--explain`` / ``?explain=`` / ``explain =`` accept: a method, or ``none``.
EXPLAIN_CHOICES: tuple[str, ...] = (*SERVED_METHODS, "none")
#: The same as a type, for request parameters that document their values.
ExplainChoice = Literal[EXPLAIN_CHOICES]  # type: ignore[valid-type]


def check_explain(value: str) -> str:
    """``value`` if it is one of :data:`EXPLAIN_CHOICES`; else ValueError naming it."""
    if value not in EXPLAIN_CHOICES:
        raise ValueError(f"explain {value!r}: use one of {', '.join(EXPLAIN_CHOICES)}")
    return value
