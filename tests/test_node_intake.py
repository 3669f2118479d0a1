"""Intake and the workers' loading: what a worker scores is what was acknowledged.

A received object is parsed and gated once, stored, recorded and queued before it is
acknowledged; the workers may get it from memory instead (the intake's handoff), which must
give exactly what the stored object gives and never hold more than its limit.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.jobs.intake import Handoff, Intake, Work, receive
from node.jobs.queue import SqliteJobQueue
from node.jobs.records import SqliteJobRecords
from node.jobs.sqlite import Database
from node.jobs.storage import INCOMING, SpoolStore
from node.jobs.worker import Worker
from node.settings import Settings


def make_intake(root: Path, limit: int) -> Intake:
    store = SpoolStore(root)
    db = Database(root / "queue.sqlite3")
    return Intake(store, SqliteJobQueue(db), SqliteJobRecords(db), handoff=Handoff(limit))


def make_worker(tmp_path: Path, intake: Intake) -> Worker:
    settings = Settings(spool=tmp_path / "spool", model="unused.pt")
    return Worker("worker-t", settings, intake, None, threading.Event())


def test_handoff_is_bounded_and_gives_each_object_once() -> None:
    handoff = Handoff(limit_bytes=100)
    a, b = pydicom.Dataset(), pydicom.Dataset()
    assert handoff.put("a", a, 60)
    assert not handoff.put("b", b, 60)  # over the limit: not kept
    assert handoff.held_bytes == 60
    assert handoff.take("a") is a
    assert handoff.take("a") is None and handoff.held_bytes == 0
    assert handoff.put("b", b, 60)


@pytest.mark.parametrize("how", ["memory", "stored only"])
def test_worker_loads_from_memory_what_the_stored_object_holds(tmp_path: Path, cr_path: Path,
                                                               how: str) -> None:
    data = cr_path.read_bytes()
    intake = make_intake(tmp_path / "spool", 0 if how == "stored only" else 64 * 2**20)
    job_id = intake.accept(receive(data, "dimse", "MOD"))
    [work] = intake.claim(8)
    assert work.ticket.job_id == job_id
    assert intake.store.get(work.ticket.key) == data  # stored before anything else
    assert (work.dataset is None) == (how == "stored only")

    loaded = make_worker(tmp_path, intake)._load(work)
    from_file = make_worker(tmp_path, intake)._load(Work(work.ticket))
    assert intake.handoff.held_bytes == 0  # taken once, then gone
    assert np.array_equal(loaded.pixels, from_file.pixels)
    assert loaded.sop_uid == from_file.sop_uid and loaded.steps == from_file.steps


def test_object_the_queue_refuses_leaves_nothing_behind(tmp_path: Path, cr_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed put (say the disk of the queue is full) leaves no stored object, no memory
    held and no open job record for an object that was not acknowledged."""
    intake = make_intake(tmp_path / "spool", 64 * 2**20)

    def refuse(*args, **kwargs):
        assert intake.handoff.held_bytes > 0  # kept before the ticket can be claimed
        raise OSError("database or disk is full")

    monkeypatch.setattr(intake.queue, "put", refuse)
    with pytest.raises(OSError):
        intake.accept(receive(cr_path.read_bytes(), "dimse", "MOD"))
    assert intake.handoff.held_bytes == 0
    assert list(intake.store.keys(INCOMING)) == []
    assert intake.records.open_jobs() == []
    assert intake.records.failed_document()["failed_jobs"][0]["code"] == "not-stored"


def test_a_declined_object_is_stored_and_recorded_as_skipped(tmp_path: Path,
                                                             cr_path: Path) -> None:
    """The gate runs once, at intake: a lateral view is acknowledged (stored, recorded as
    skipped with its code) and never reaches the queue."""
    ds = pydicom.dcmread(cr_path)
    ds.ViewPosition = "LL"
    path = tmp_path / "lateral.dcm"
    ds.save_as(path, enforce_file_format=True)
    intake = make_intake(tmp_path / "spool", 64 * 2**20)
    received = receive(path.read_bytes(), "dimse", "MOD")
    assert received.verdict is not None and received.verdict.code == "view"
    job_id = intake.accept(received)
    assert intake.claim(8) == [] and intake.depth() == 0
    record = intake.records.job(job_id)
    assert (record.state, record.code) == ("skipped", "view")
    assert list(intake.store.keys(INCOMING)) == []  # purged, as after any skipped job
