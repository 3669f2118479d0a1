"""Object storage: where received objects and results are kept, by key.

:class:`ObjectStore` is what the jobs layer needs of it; :class:`SpoolStore` is the embedded
default, a folder (a local disk, or a POSIX share such as NFS that several machines mount).
A key is ``AREA/NAME`` (``incoming/<uuid>.dcm``, ``outbox/<uid>.dcm``), the same on every
machine that shares the store: records and tickets carry keys, never paths.

A durable write is: temp file in ``tmp/``, ``fsync``, rename into place, ``fsync`` of the
folder. A reader never sees half a file, and a file that is in place survives a crash or
power loss.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from node.core.errors import OutOfResourcesError

logger = logging.getLogger(__name__)

INCOMING = "incoming"
OUTBOX = "outbox"
AREAS = (INCOMING, OUTBOX)
#: A partial write in a shared store's ``tmp/`` older than this is a crashed writer's.
STALE_PART_S = 3600


class SpoolFullError(OutOfResourcesError, OSError):
    """No room: the disk is (nearly) full or the spool quota is reached."""

    def __init__(self, code: int, message: str) -> None:
        OSError.__init__(self, code, message)

    def __str__(self) -> str:
        return str(self.strerror)


class StoreUnavailableError(OutOfResourcesError, OSError):
    """The store could not be read now (a shared mount that does not answer, an I/O error):
    not the object's fault; try again later."""


class ObjectStore(Protocol):
    """Keyed, durable object storage shared by every role of the node."""

    def put(self, area: str, data: bytes, name: str | None = None,
            durable: bool = True) -> str:
        """Store ``data`` under ``area`` (a new unique name unless ``name``); its key.
        Raises :class:`SpoolFullError` with nothing written when there is no room."""
        ...

    def get(self, key: str) -> bytes: ...

    def local_path(self, key: str) -> Path:
        """A file on this machine holding the object (to stream it to a peer)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; nothing happens when it is gone already."""
        ...

    def keys(self, area: str) -> Iterator[str]: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolStore:
    """:class:`ObjectStore` in a folder, with a size quota and a free-space floor."""

    def __init__(self, root: Path, quota_bytes: int | None = None,
                 min_free_bytes: int = 0, shared: bool = False) -> None:
        """``shared``: other processes (other machines) write to ``root`` at the same time;
        only their partial writes older than :data:`STALE_PART_S` are removed here, and the
        quota counts this process's writes since it started."""
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        for folder in (*(self.root / a for a in AREAS), self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        stale = time.time() - STALE_PART_S
        for leftover in self.tmp.iterdir():  # partial writes of a crashed run
            with contextlib.suppress(FileNotFoundError):
                if not shared or leftover.stat().st_mtime < stale:
                    leftover.unlink(missing_ok=True)
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._used = 0 if shared else sum(
            f.stat().st_size for a in AREAS for f in (self.root / a).glob("*") if f.is_file())

    def local_path(self, key: str) -> Path:
        area, _, name = key.partition("/")
        if area not in AREAS or not name or "/" in name or name.startswith("."):
            raise ValueError(f"storage key {key!r} is not AREA/NAME")
        return self.root / area / name

    def check_room(self, size: int) -> None:
        """Raise :class:`SpoolFullError` unless ``size`` more bytes fit the quota and leave
        ``min_free_bytes`` free. Without a floor the disk is not asked: free space is an
        estimate (a share's more so), the write's own ENOSPC is the answer."""
        if self.quota_bytes is not None and self._used + size > self.quota_bytes:
            raise SpoolFullError(errno.EDQUOT, f"spool quota reached ({self._used} bytes used)")
        if self.min_free_bytes <= 0:  # no floor: the write itself finds out (ENOSPC)
            return
        free = shutil.disk_usage(self.root).free
        if free - size < self.min_free_bytes:
            raise SpoolFullError(errno.ENOSPC, f"disk nearly full ({free} bytes free)")

    def put(self, area: str, data: bytes, name: str | None = None,
            durable: bool = True) -> str:
        """Write ``data`` as ``area/name``, fsynced unless ``durable`` is false (for a caller
        whose answer is its acknowledgement); nothing is left behind on failure."""
        key = f"{area}/{name or uuid.uuid4().hex + '.dcm'}"
        final = self.local_path(key)
        self.check_room(len(data))
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"  # unique across machines too
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
                _fsync_dir(final.parent)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(e.errno, f"disk full while writing: {e.strerror}") from e
            raise StoreUnavailableError(e.errno, f"writing {key}: {e.strerror}") from e
        with self._lock:
            self._used += len(data)
        return key

    def get(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def delete(self, key: str) -> None:
        path = self.local_path(key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self._used -= size

    def keys(self, area: str) -> Iterator[str]:
        for path in sorted((self.root / area).glob("*.dcm")):
            yield f"{area}/{path.name}"
