"""Intake and the workers' loading: what a worker scores is what was acknowledged.

A received object is written to the spool before it is acknowledged; the workers may get it
from memory instead (the intake's handoff), which must give exactly what the file gives and
never hold more than its limit.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from dicom_io import read_dataset
from node.jobs.intake import Handoff, Intake
from node.jobs.queue import SqliteQueue
from node.jobs.storage import Spool
from node.jobs.worker import Worker
from node.settings import Settings


def make_intake(tmp_path: Path, limit: int) -> Intake:
    spool = Spool(tmp_path / "spool")
    return Intake(spool, SqliteQueue(tmp_path / "spool" / "queue.sqlite3"),
                  handoff=Handoff(limit))


def make_worker(tmp_path: Path, intake: Intake) -> Worker:
    settings = Settings(spool=tmp_path / "spool", model="unused.pt")
    return Worker("worker-t", settings, intake, None, threading.Event(), [])


def test_handoff_is_bounded_and_gives_each_object_once() -> None:
    handoff = Handoff(limit_bytes=100)
    assert handoff.put("a", b"x" * 60, 60)
    assert not handoff.put("b", b"y" * 60, 60)  # over the limit: not kept
    assert handoff.held_bytes == 60
    assert handoff.take("a") == b"x" * 60
    assert handoff.take("a") is None and handoff.held_bytes == 0
    assert handoff.put("b", b"y" * 60, 60)


@pytest.mark.parametrize("how", ["dataset", "bytes", "file only", "not fsynced"])
def test_worker_loads_from_memory_what_the_spool_file_holds(tmp_path: Path, cr_path: Path,
                                                            how: str) -> None:
    data = cr_path.read_bytes()
    intake = make_intake(tmp_path, 0 if how == "file only" else 64 * 2**20)
    dataset = read_dataset(data) if how == "dataset" else None
    job_id = intake.accept(data, None, "MOD", "dimse", dataset=dataset,
                           durable=how != "not fsynced")  # /score: the answer acknowledges
    [job] = intake.queue.claim(8)
    assert job.id == job_id
    assert Path(job.path).read_bytes() == data  # on disk before anything else
    assert intake.handoff.held_bytes == (0 if how == "file only" else len(data))

    loaded = make_worker(tmp_path, intake)._load(job)
    from_file = make_worker(tmp_path, make_intake(tmp_path / "other", 0))._load(job)
    assert intake.handoff.held_bytes == 0  # taken once, then gone
    assert np.array_equal(loaded.pixels, from_file.pixels)
    assert loaded.sop_uid == from_file.sop_uid and loaded.steps == from_file.steps


def test_object_the_queue_refuses_leaves_nothing_behind(tmp_path: Path, cr_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed enqueue (say the disk of the queue is full) leaves no spool file and no
    memory held for a job that does not exist."""
    intake = make_intake(tmp_path, 64 * 2**20)

    def refuse(*args, **kwargs):
        assert intake.handoff.held_bytes > 0  # kept before the job can be claimed
        raise OSError("database or disk is full")

    monkeypatch.setattr(intake.queue, "enqueue", refuse)
    with pytest.raises(OSError):
        intake.accept(cr_path.read_bytes(), None, "MOD", "dimse")
    assert intake.handoff.held_bytes == 0
    assert list(intake.spool.incoming.glob("*.dcm")) == []
