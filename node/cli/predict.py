"""``cxr-node predict``: run the model over files and write one result folder per image."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dicom_io import DicomIOError, load
from domain import SourceImage
from inference import LoadedModel, Predictor, Scored

logger = logging.getLogger(__name__)

SKIP_NAMES = {"DICOMDIR"}


def iter_inputs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and files under folders named (recursively, sorted, hidden ones skipped)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and name not in SKIP_NAMES:
                        yield Path(root) / name
        else:
            yield p


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _load(path: Path) -> SourceImage | DicomIOError:
    try:
        return load(path)
    except DicomIOError as e:
        return e


class ResultWriter:
    """Writes what one scored image yields into ``out/<key>/`` (result.json, explanation...).

    ``extras`` are callables ``(scored, folder, result) -> None`` run before result.json is
    written; they add explanation and DICOM result files and fields of ``result``.
    """

    def __init__(self, model: LoadedModel, out: Path, extras: Sequence[Any] = ()) -> None:
        self.model = model
        self.out = out
        self.extras = list(extras)

    def __call__(self, scored: Scored) -> Path:
        folder = self.out / _safe_name(scored.image.key)
        folder.mkdir(parents=True, exist_ok=True)
        result = scored.result(self.model)
        for extra in self.extras:
            extra(scored, folder, result)
        path = folder / "result.json"
        write_json_atomic(path, result)
        return path


def _safe_name(key: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    return cleaned.strip(".") or "image"


def run_batch(
    paths: Sequence[Path],
    predictor: Predictor,
    writer: ResultWriter,
    errors: TextIO = sys.stderr,
    progress: bool | None = None,
) -> BatchReport:
    """Load (in a background thread, one batch ahead), predict, write; report failures.

    Each declined or broken input gets one line on ``errors``: ``PATH: CODE: REASON``.
    """
    from tqdm import tqdm

    report = BatchReport()
    size = predictor.batch_size
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    show = progress if progress is not None else (len(paths) >= 8 and errors.isatty())
    bar = tqdm(total=len(paths), unit="image", disable=not show, file=sys.stderr)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool:
        pending: list[Future] = [pool.submit(_load, p) for p in chunks[0]] if chunks else []
        for index, chunk in enumerate(chunks):
            loaded = [f.result() for f in pending]
            if index + 1 < len(chunks):
                pending = [pool.submit(_load, p) for p in chunks[index + 1]]
            images: list[SourceImage] = []
            for path, item in zip(chunk, loaded, strict=True):
                if isinstance(item, DicomIOError):
                    report.failed.append((path, f"{item.code}: {item.reason}"))
                    print(f"{path}: {item.code}: {item.reason}", file=errors, flush=True)
                else:
                    images.append(item)
            for scored in predictor(images) if images else []:
                report.written.append(writer(scored))
            bar.update(len(chunk))
    bar.close()
    return report
