"""The DICOM result objects of one image, each encoded once when first asked for."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset

#: File name of each result type in :meth:`ResultSet.write`.
FILE_NAMES: dict[str, str] = {"sr": "sr.dcm", "sc": "heatmap_sc.dcm", "pm": "heatmap_pm.dcm"}


@dataclass
class ResultSet:
    """The result objects of one image: ``sr`` always, ``sc``/``pm`` when a heat map is shown.

    ``heatmap_note`` says why there is no capture or map (no heat map, or suppressed).
    """

    sr: Dataset
    sc: Dataset | None = None
    pm: Dataset | None = None
    heatmap_note: str | None = None
    _encoded: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def part10(self, kind: str) -> bytes:
        """The ``kind`` object as a DICOM Part 10 file (Explicit VR LE), encoded once."""
        data = self._encoded.get(kind)
        if data is None:
            ds = dict(self.items()).get(kind)
            if ds is None:
                raise KeyError(f"no {kind!r} object in this result set")
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            data = self._encoded[kind] = buffer.getvalue()
        return data

    def items(self) -> list[tuple[str, Dataset]]:
        """``(type, dataset)`` of the objects present, SR first."""
        return [(k, ds) for k, ds in (("sr", self.sr), ("sc", self.sc), ("pm", self.pm))
                if ds is not None]

    @property
    def datasets(self) -> list[Dataset]:
        return [ds for _, ds in self.items()]

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``sr.dcm``, ``heatmap_sc.dcm``, ``heatmap_pm.dcm`` (those present) as
        DICOM Part 10 files into ``out_dir`` (created); return ``{type: path}``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for kind, _ in self.items():
            path = out / FILE_NAMES[kind]
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(self.part10(kind))
            tmp.replace(path)
            written[kind] = path
        return written
