"""A real full disk: the spool and its SQLite records on a small filesystem of their own (a
tmpfs this test mounts), no quota and no free-space floor, filled by real C-STOREs until the
kernel answers ENOSPC. The node refuses (C-STORE 0xA700, STOW-RS 503 with ``Retry-After``),
keeps answering C-ECHO, leaves nothing half-written, and once room comes back processes
everything it acknowledged.

The test mounts the tmpfs as root; where it may not, the node mounts it itself inside
``unshare -rm`` (``CXR_TEST_DISK_MOUNT=unshare`` takes that way where root may mount too)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from conftest import record_figure

from node.core.pipeline import Pipeline
from node.http.multipart import build_related
from node.jobs.intake import Intake, receive
from node.jobs.queue import SqliteJobQueue
from node.jobs.records import SqliteJobRecords
from node.jobs.sqlite import Database
from node.jobs.storage import INCOMING, SpoolFullError, SpoolStore
from node.jobs.worker import Worker
from node.settings import Settings
from system.conftest import radiograph_copy
from system.peers import NodeProcess, Receiver, free_port, storescu, wait_until

#: The node's disk, and the room left to images once the node has started.
DISK_MB, ROOM_MB = 12, 1.5


def tmpfs_mount(path: Path, size_mb: int) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                           str(path)], capture_output=True, text=True)


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` at ``path``, mounted by this process (as root); skipped, with
    the reason, where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = tmpfs_mount(path, size_mb)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


#: ``sh -c`` script: mount a tmpfs of $1 MiB at $2, then run the rest as the process itself.
IN_NAMESPACE = 'mount -t tmpfs -o size="$1"m tmpfs "$2" && shift 2 && exec "$@"'


def mount_mode(probe: Path) -> str:
    """``mount`` where this process may mount a tmpfs, ``unshare`` where only a process in a
    user and mount namespace of its own may (``unshare -rm``); skipped where neither."""
    probe.mkdir(parents=True, exist_ok=True)
    mounted = tmpfs_mount(probe, 1)
    if mounted.returncode == 0:
        subprocess.run(["umount", str(probe)], check=False)
        return "mount"
    inside = subprocess.run(["unshare", "-rm", "sh", "-c", IN_NAMESPACE, "sh", "1", str(probe),
                             "true"], capture_output=True, text=True)
    if inside.returncode == 0:
        return "unshare"
    pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}; nor in a namespace of its "
                f"own: {inside.stderr.strip()}")


@dataclass
class NodeOnItsDisk(NodeProcess):
    """The node, its spool on the tmpfs at the spool's parent folder. With ``namespace_mb``
    the node mounts that tmpfs itself, inside ``unshare -rm``; the test then sees it through
    ``/proc/PID/root`` (:meth:`disk`)."""

    namespace_mb: int = 0

    def command(self) -> list[str]:
        cmd = super().command()
        if not self.namespace_mb:
            return cmd
        return ["unshare", "-rm", "sh", "-c", IN_NAMESPACE, "sh", str(self.namespace_mb),
                str(self.spool.parent), *cmd]

    def disk(self) -> Path:
        """The node's disk as this process sees it."""
        folder = self.spool.parent
        if not self.namespace_mb:
            return folder
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root") / folder.relative_to("/")


def fill(path: Path, leave: int = 0) -> int:
    """Write ``path`` until the kernel says ENOSPC (or only ``leave`` bytes are free); the
    bytes written."""
    written = 0
    block = b"\0" * 4096
    try:
        with path.open("wb") as f:
            while shutil.disk_usage(path.parent).free > leave + len(block):
                f.write(block)
                f.flush()
                written += len(block)
            while not leave:
                f.write(block[:512])
                f.flush()
                os.fsync(f.fileno())
                written += 512
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    return written


def send(port: int, image: Path) -> subprocess.CompletedProcess:
    """``storescu -v`` (which prints the status it gets) of one image."""
    return storescu(port, [image], extra=("-v",))


def refused(proc: subprocess.CompletedProcess) -> bool:
    """Whether storescu's image was refused with 0xA700, out of resources."""
    return "Refused: OutOfResources" in proc.stderr


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_a_full_job_database_refuses_cleanly_and_recovers(tmp_path: Path,
                                                         cr_path: Path) -> None:
    """SQLite's "database or disk is full" is out of resources, like ENOSPC on an image:
    nothing is written (the image stored first is removed again), the database stays whole,
    and the same intake takes images again once room comes back."""
    with small_filesystem(tmp_path / "disk", 4) as disk:
        store = SpoolStore(disk / "spool")
        db = Database(disk / "spool" / "queue.sqlite3")
        intake = Intake(store, SqliteJobQueue(db), SqliteJobRecords(db))
        image = radiograph_copy(cr_path, tmp_path / "db.dcm", "dbfull", downscale=16)
        data = image.read_bytes()
        first = intake.accept(receive(data, "dimse", "MODALITY"))
        # room for exactly one more image (whole pages), and then none for its record
        room = disk / "room"
        room.write_bytes(b"\0" * (-(-len(data) // 4096) * 4096))
        fill(disk / "filler")
        room.unlink()
        with pytest.raises(SpoolFullError, match="job database full"):
            intake.accept(receive(data, "dimse", "MODALITY"))
        assert [k for k in store.keys(INCOMING)] == [intake.records.job(first).key]
        assert not list(store.tmp.iterdir())  # no partial write left
        (disk / "filler").unlink()
        job = intake.accept(receive(data, "dimse", "MODALITY"))
        assert intake.records.job(job).state == "queued"
        assert intake.records.counts() == {"jobs_queued": 2}
        check = sqlite3.connect(db.path).execute("PRAGMA integrity_check").fetchone()[0]
        assert check == "ok"


class NoRoomForOneStart(SqliteJobRecords):
    """Job records whose disk is full at the workers' first write of a batch, as SQLite says
    it (the write a worker makes after claiming its tickets)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.refused = 0

    def started(self, job_ids) -> None:
        if not self.refused:
            self.refused += 1
            raise SpoolFullError(errno.ENOSPC, "job database full: database or disk is full")
        super().started(job_ids)


def test_a_batch_stopped_by_a_full_database_is_claimed_again(tmp_path: Path, cr_path: Path,
                                                             loaded_model) -> None:
    """The embedded queue gives leases back only at start: a worker whose batch stops for
    want of room gives them back itself, and the job is done once there is room."""
    store = SpoolStore(tmp_path / "spool")
    db = Database(tmp_path / "spool" / "queue.sqlite3")
    records = NoRoomForOneStart(db)
    intake = Intake(store, SqliteJobQueue(db), records)
    settings = Settings(spool=tmp_path / "spool", model="in-memory", explain="none",
                        min_free_mb=0, batch_size=1, max_queue_delay_ms=0)
    stop = threading.Event()
    worker = Worker("w", settings, intake, Pipeline(loaded_model, "none", batch_size=1), stop)
    image = radiograph_copy(cr_path, tmp_path / "lease.dcm", "lease", downscale=8)
    job = intake.accept(receive(image.read_bytes(), "dimse", "MODALITY"))
    worker.start()
    try:
        wait_until(lambda: records.job(job).state == "done", 60, 0.1, "the job to be done")
    finally:
        stop.set()
        worker.join(30)
    assert records.refused == 1 and intake.queue.depth() == 0


def test_a_real_full_disk_refuses_then_processes_everything_acknowledged(
        tmp_path: Path, whole_model_path: Path, cr_path: Path, dcmtk) -> None:
    mode = os.environ.get("CXR_TEST_DISK_MOUNT") or mount_mode(tmp_path / "probe")
    pacs = Receiver("PACS", free_port(), tmp_path / "pacs")  # down while the disk fills
    folder = tmp_path / "disk"
    with contextlib.ExitStack() as stack:
        if mode == "mount":
            stack.enter_context(small_filesystem(folder, DISK_MB))
        else:
            folder.mkdir()
        node = NodeOnItsDisk(folder / "spool", whole_model_path, [pacs.address],
                             explain="none", log=tmp_path / "node.log",
                             env={"CXR_NODE_MIN_FREE_MB": "0"},
                             namespace_mb=DISK_MB if mode == "unshare" else 0)
        stack.callback(pacs.stop)
        stack.callback(node.stop)
        node.start()
        disk = node.disk()
        spool = disk / "spool"
        filler = disk / "filler"
        fill(filler, leave=int(ROOM_MB * 2**20))
        acknowledged: list[str] = []
        last = None
        for i in range(40):
            last = radiograph_copy(cr_path, tmp_path / "in" / f"{i}.dcm", f"full{i}",
                                   downscale=8)
            sent = send(node.dicom_port, last)
            if refused(sent):
                break
            assert sent.returncode == 0, sent.stderr
            acknowledged.append(sop_uid(last))
        else:
            pytest.fail("the disk never filled")
        assert acknowledged, "the first image was refused"
        # what room is left (less than an image), taken to the last block
        fill(disk / "filler-rest")
        assert refused(send(node.dicom_port, last))
        body, content_type = build_related([last.read_bytes()])
        r = httpx.post(f"{node.url}/dicomweb/studies", content=body, timeout=60,
                       headers={"Content-Type": content_type})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
        echo = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", "CXRNODE",
                               "127.0.0.1", str(node.dicom_port)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        assert not list((spool / "tmp").iterdir()), "a partial write was left"
        # room comes back: the fillers go, the PACS comes up
        filler.unlink()
        (disk / "filler-rest").unlink(missing_ok=True)
        pacs.start()
        received = pacs.wait_for(len(acknowledged), timeout=240)
        sources = {str(ref.ReferencedSOPInstanceUID) for ds in received
                   for item in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                   for series in item.ReferencedSeriesSequence
                   for ref in series.ReferencedSOPSequence}
        assert set(acknowledged) <= sources
        wait_until(node.idle, 120, 0.25, "every job and delivery to end", node.proc)
        # a copy (idle: nothing writes meanwhile); SQLite does not open through /proc/PID/root
        for name in ("queue.sqlite3", "queue.sqlite3-wal"):
            if (spool / name).exists():
                shutil.copy(spool / name, tmp_path / name)
        with contextlib.closing(sqlite3.connect(tmp_path / "queue.sqlite3")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            keys = {row[0] for row in db.execute("SELECT key FROM jobs")}
        # every object kept has its record: nothing half-written
        assert {f"{INCOMING}/{p.name}" for p in (spool / INCOMING).iterdir()} <= keys
        again = send(node.dicom_port, last)
        assert again.returncode == 0 and not refused(again), again.stderr
        record_figure(f"fault disk full (tmpfs, {mode}): {len(acknowledged)} C-STOREs "
                      f"acknowledged before ENOSPC, then 0xA700 and STOW-RS 503; database "
                      f"full seen: {'job database full' in node.log_text()}; all delivered "
                      f"once room came back")
