"""``cxr-node predict``: run the model over files and write one result folder per image."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dicom_io import DicomIOError, InvalidInputError, load
from domain import SourceImage
from inference import LoadedModel, Predictor, Scored

logger = logging.getLogger(__name__)

SKIP_NAMES = {"DICOMDIR"}


def iter_inputs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and files under folders named (recursively, sorted, hidden ones skipped).

    A folder that cannot be listed is yielded itself, so that it gets its line (``load``
    says ``unreadable``) instead of vanishing with the files in it.
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from _walk(p)
        else:
            yield p


def _walk(folder: Path) -> Iterator[Path]:
    unlisted: list[Path] = []

    def note(error: OSError) -> None:
        unlisted.append(Path(error.filename) if error.filename else folder)

    for root, dirs, files in os.walk(folder, onerror=note):
        while unlisted:
            yield unlisted.pop(0)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name not in SKIP_NAMES:
                yield Path(root) / name
    yield from unlisted


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


@dataclass(frozen=True)
class Failure:
    """Why one image got a line instead of a result folder."""

    code: str
    reason: str


def _load(path: Path) -> SourceImage | DicomIOError:
    try:
        if path.is_dir():  # from iter_inputs: a folder it could not list
            return InvalidInputError("unreadable", "a folder that cannot be listed")
        return load(path)
    except DicomIOError as e:
        return e
    except Exception as e:  # a reader bug must cost this file only, not the run
        logger.debug("loading %s failed", path, exc_info=True)
        return DicomIOError("corrupt", f"{type(e).__name__}: {e}")


def _failure(stage: str, error: Exception) -> Failure:
    """``error`` as the line of one image: its own code when it has one, else ``stage``."""
    if isinstance(error, DicomIOError):
        return Failure(error.code, error.reason)
    logger.debug("%s: %s", stage, type(error).__name__, exc_info=error)
    return Failure(stage, f"{type(error).__name__}: {error}")


class ResultWriter:
    """Writes what one scored image yields into ``out/<key>/`` (result.json, explanation...).

    ``extras`` are callables ``(scored, folder, result) -> None`` run before result.json is
    written; they add explanation and DICOM result files and fields of ``result``.

    Everything is written into a hidden folder beside the result folder first and renamed
    into place once complete: an image that fails half-way leaves no folder, and one that
    succeeds replaces what an earlier run left for it.
    """

    def __init__(self, model: LoadedModel, out: Path, extras: Sequence[Any] = ()) -> None:
        self.model = model
        self.out = out
        self.extras = list(extras)

    def folder(self, image: SourceImage) -> Path:
        """Where ``image``'s results go: ``out/<SOP Instance UID or PNG stem>``."""
        return self.out / _safe_name(image.key)

    def __call__(self, scored: Scored) -> Path:
        final = self.folder(scored.image)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".partial-{final.name}-"))
        try:
            result = scored.result(self.model)
            for extra in self.extras:
                extra(scored, staging, result)
            write_json_atomic(staging / "result.json", result)
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final / "result.json"


def _safe_name(key: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    return cleaned.strip(".") or "image"


def _one_line(text: str) -> str:
    """``text`` on one line (exception messages may span several)."""
    return " ".join(str(text).split())


def _score(predictor: Predictor, images: list[tuple[Path, SourceImage]]
           ) -> list[tuple[Path, Scored | Failure]]:
    """Score a batch; when the batch fails, each image alone, so only the bad one fails."""
    try:
        scored = predictor([image for _, image in images])
        return [(path, one) for (path, _), one in zip(images, scored, strict=True)]
    except Exception as e:
        if len(images) == 1:
            return [(images[0][0], _failure("predict-failed", e))]
    out: list[tuple[Path, Scored | Failure]] = []
    for item in images:
        out += _score(predictor, [item])
    return out


def run_batch(
    paths: Sequence[Path],
    predictor: Predictor,
    writer: ResultWriter,
    errors: TextIO | None = None,
    progress: bool | None = None,
) -> BatchReport:
    """Load (in a background thread, one batch ahead), predict, write; report failures.

    Every input ends as exactly one of: a result folder, or one line on ``errors`` (default:
    ``sys.stderr`` at the call), ``PATH: CODE: REASON``, and the run goes on. CODE is the
    gate's code for an input it refuses (``not-dicom``, ``missing-uid``, ``view``...);
    ``duplicate`` for a second input whose result would replace another's of this run (same
    SOP Instance UID, or PNG stem); ``predict-failed`` when the model fails on it; the
    error's own (``result-build``...) or ``result-failed`` when its explanation or results
    cannot be made or written.
    """
    from tqdm import tqdm

    errors = errors if errors is not None else sys.stderr
    report = BatchReport()
    claimed: dict[Path, Path] = {}  # result folder -> the input it belongs to

    def fail(path: Path, code: str, reason: str) -> None:
        line = f"{_one_line(code)}: {_one_line(reason)}"
        report.failed.append((path, line))
        print(f"{_one_line(str(path))}: {line}", file=errors, flush=True)

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
            images: list[tuple[Path, SourceImage]] = []
            for path, item in zip(chunk, loaded, strict=True):
                if isinstance(item, DicomIOError):
                    fail(path, item.code, item.reason)
                    continue
                folder = writer.folder(item)
                if folder in claimed:
                    fail(path, "duplicate", f"its result {folder.name} is that of "
                         f"{claimed[folder]} (same SOP Instance UID or file name)")
                    continue
                claimed[folder] = path
                images.append((path, item))
            del loaded
            for path, scored in _score(predictor, images) if images else []:
                if isinstance(scored, Failure):
                    fail(path, scored.code, scored.reason)
                    continue
                try:
                    report.written.append(writer(scored))
                except Exception as e:  # explaining, building or writing: this image only
                    failure = _failure("result-failed", e)
                    fail(path, failure.code, failure.reason)
            bar.update(len(chunk))
    bar.close()
    return report
