"""What ``predict`` writes beside ``result.json``: explanation files and DICOM results."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference import LoadedModel, Scored

logger = logging.getLogger(__name__)

Extra = Callable[[Scored, Path, dict[str, Any]], None]


def output_extras(model: LoadedModel, explain: str, sanity: bool = False) -> list[Extra]:
    """The per-image steps after prediction, chosen once for the whole run."""
    if explain not in ("none", ""):
        raise ValueError(f"--explain {explain!r}: explanations are not available yet; use none")
    return []
