"""The source image every layer passes on: display-ready pixels and the header they came with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset


@dataclass
class SourceImage:
    """A display-ready radiograph and where it came from.

    ``pixels`` is MONOCHROME2 (white = dense) with values in ``0..maxval``: ``uint16`` with
    ``maxval`` 65535 for DICOM and 16-bit PNG, ``uint8`` with 255 for 8-bit PNG. ``header`` is
    the source dataset without its pixel data (``None`` for PNG).
    """

    name: str
    pixels: np.ndarray
    maxval: int
    header: Dataset | None = None
    steps: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def columns(self) -> int:
        return int(self.pixels.shape[1])

    def _uid(self, keyword: str) -> str | None:
        if self.header is None or keyword not in self.header:
            return None
        return str(self.header[keyword].value)

    @property
    def study_uid(self) -> str | None:
        return self._uid("StudyInstanceUID")

    @property
    def series_uid(self) -> str | None:
        return self._uid("SeriesInstanceUID")

    @property
    def sop_uid(self) -> str | None:
        return self._uid("SOPInstanceUID")

    @property
    def sop_class_uid(self) -> str | None:
        return self._uid("SOPClassUID")

    @property
    def key(self) -> str:
        """Identifier of the image in results: its SOP Instance UID, or the PNG's file stem."""
        return self.sop_uid or Path(self.name).stem

    def source_uids(self) -> dict[str, str | None]:
        return {
            "study_instance_uid": self.study_uid,
            "series_instance_uid": self.series_uid,
            "sop_instance_uid": self.sop_uid,
            "sop_class_uid": self.sop_class_uid,
        }
