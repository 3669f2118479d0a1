"""The spool: received objects written durably before they are acknowledged.

Layout under the spool root: ``incoming/`` (objects as received), ``outbox/`` (result
objects waiting for delivery), ``queue.sqlite3`` (the job queue), ``tmp/`` (partial writes).
A write is: temp file in ``tmp/``, ``fsync``, rename into place, ``fsync`` of the folder. A
reader never sees half a file, and a file that is in place survives a crash or power loss.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)


class SpoolFullError(OSError):
    """No room: the disk is (nearly) full or the spool quota is reached."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable file storage with a size quota and a free-space floor."""

    def __init__(self, root: Path, quota_bytes: int | None = None, min_free_bytes: int = 0):
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.outbox = self.root / "outbox"
        self.tmp = self.root / "tmp"
        for folder in (self.incoming, self.outbox, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():  # partial writes of a crashed run
            leftover.unlink(missing_ok=True)
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._used = sum(f.stat().st_size for f in self.root.rglob("*.dcm") if f.is_file())

    @property
    def used_bytes(self) -> int:
        return self._used

    def check_room(self, size: int) -> None:
        """Raise :class:`SpoolFullError` unless ``size`` more bytes fit."""
        if self.quota_bytes is not None and self._used + size > self.quota_bytes:
            raise SpoolFullError(errno.EDQUOT, f"spool quota reached ({self._used} bytes used)")
        free = shutil.disk_usage(self.root).free
        if free - size < self.min_free_bytes:
            raise SpoolFullError(errno.ENOSPC, f"disk nearly full ({free} bytes free)")

    def write(self, folder: Path, name: str, data: bytes, durable: bool = True) -> Path:
        """Write ``data`` as ``folder/name``, durably (fsynced) unless ``durable`` is false;
        nothing is left behind on failure."""
        self.check_room(len(data))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        final = folder / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            if durable:
                _fsync_dir(folder)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(e.errno, f"disk full while writing: {e.strerror}") from e
            raise
        with self._lock:
            self._used += len(data)
        return final

    def store_incoming(self, data: bytes, durable: bool = True) -> Path:
        """Store one received object under a new unique name."""
        return self.write(self.incoming, f"{uuid.uuid4().hex}.dcm", data, durable)

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self._used -= size
