"""What the operators' page keeps and reads in the job records: a done job's view (thumbnail
only where allowed, no patient data by default, counters for /metrics), keyset paging on
100,000 jobs through indexes, and the schema 1 -> 2 migration."""

from __future__ import annotations

import io
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import generate_latest
from pydicom.dataset import Dataset

from domain import Finding, HeatMap, Prediction, Region, SourceImage
from inference import Scored
from node.core.pipeline import Outcome
from node.jobs import browse
from node.jobs.intake import Intake, Work
from node.jobs.model import JobOutcome, ResultObject, Ticket
from node.jobs.postgres import PostgresJobRecords
from node.jobs.queue import SqliteJobQueue
from node.jobs.records import SqliteJobRecords
from node.jobs.sql import SqlJobRecords
from node.jobs.sqlite import SCHEMA, SCHEMA_VERSION, Database
from node.jobs.storage import SpoolStore
from node.jobs.views import ViewWorker, make_view, views_folder
from node.metrics import REGISTRY
from node.settings import Settings


def outcome(burned_in: str | None) -> Outcome:
    header = Dataset()
    header.SOPInstanceUID, header.StudyInstanceUID = "1.2.3.4", "1.2.3"
    header.Modality, header.StudyDate = "CR", "20260102"
    header.PatientName, header.PatientID = "Doe^Jane", "PID-77"
    if burned_in is not None:
        header.BurnedInAnnotation = burned_in
    pixels = np.linspace(0, 4095, 800 * 600).reshape(800, 600).astype(np.uint16)
    image = SourceImage("cr", pixels, 4095, header)
    prediction = Prediction((Finding("Effusion", 0.9, 0.5), Finding("Nodule", 0.2, 0.4)))
    values = np.zeros((800, 600), np.float32)
    values[300:400, 200:300] = 1
    heatmap = HeatMap(values, "Effusion", "gradcam",
                      sanity={"randomised-model": {"passed": True, "detail": "r=0.1"}})
    region = Region("Effusion", 0.9, 0.5, np.array([[200, 300], [300, 300], [300, 400],
                                                    [200, 400], [200, 300]], np.float32), 0.5)
    return Outcome(Scored(image, prediction, None, None), [heatmap], [region])


def test_a_view_keeps_figures_and_shows_a_thumbnail_only_without_burned_in_text(
        tmp_path: Path) -> None:
    settings = Settings(spool=tmp_path, model="m")
    summary, findings, files = make_view(outcome("NO"), settings)
    assert findings == [("Effusion", 0.9, True), ("Nodule", 0.2, False)]
    assert set(files) == {"thumb.png", "overlay-0.png"}
    assert summary["thumbnail"] == {"width": 600 // 2, "height": 800 // 2}
    assert summary["regions"][0]["points"][0] == [100.0, 150.0]  # on the thumbnail's grid
    assert summary["explained"][0]["sanity"]["randomised-model"]["passed"]
    assert "patient" not in summary and "Doe" not in repr(summary)
    # the overlay: the hot square opaque yellow where the map is 1, transparent elsewhere
    shown = np.asarray(Image.open(io.BytesIO(files["overlay-0.png"])).convert("RGBA"))
    assert shown.shape == (400, 300, 4)
    assert tuple(shown[175, 125]) == (255, 255, 0, 150) and shown[50, 50, 3] == 0
    for burned_in in ("YES", None):
        summary, _, files = make_view(outcome(burned_in), settings)
        assert files == {} and summary["thumbnail"] is None
    _, _, files = make_view(outcome("YES"), settings.model_copy(update={"ui_thumbnails": "all"}))
    assert "thumb.png" in files
    summary, _, _ = make_view(outcome(None), settings.model_copy(
        update={"ui_show_patient": True}))
    assert summary["patient"]["PatientName"] == "Doe^Jane"


def test_a_worker_keeps_the_view_of_a_done_job_and_counts_its_findings(tmp_path: Path) -> None:
    settings = Settings(spool=tmp_path, model="m")
    db = Database(tmp_path / "queue.sqlite3")
    records = SqliteJobRecords(db)
    intake = Intake(SpoolStore(tmp_path), SqliteJobQueue(db), records)
    worker = ViewWorker("w", settings, intake, None, threading.Event())  # type: ignore[arg-type]
    job = records.open(None, "1.2.3.4", None, "http")
    records.close(job, JobOutcome.done())
    worker.closed(Work(Ticket(job, None, "1.2.3.4", None, "http", received_at=time.time())),
                  JobOutcome.done(), outcome("NO"))
    assert browse.view(records, job)["findings"][0]["label"] == "Effusion"
    assert (views_folder(settings) / str(job) / "thumb.png").is_file()
    metrics = generate_latest(REGISTRY).decode()
    assert 'cxr_findings_total{label="Effusion",positive="true"}' in metrics
    assert 'cxr_finding_probability_sum_total{label="Nodule"}' in metrics
    assert browse.expired_views(records, time.time() + 1) == [job]
    assert browse.view(records, job) is None


JOBS = 100_000
#: The generated queue's first job's time: one job every 86.4 s, 1,000 a day.
START = 1_700_000_000.0


def created(i: int) -> float:
    return START + i * 86.4


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> SqliteJobRecords:
    """100,000 jobs over 100 days: every 10th skipped ("view"), every 7th from "CT1"."""
    db = Database(tmp_path_factory.mktemp("big") / "queue.sqlite3")
    rows = [(i, f"incoming/{i}.dcm", f"1.2.{i}", "CT1" if i % 7 == 0 else "MOD", "dimse",
             "skipped" if i % 10 == 0 else "done", "view" if i % 10 == 0 else None,
             created(i), created(i) + 1) for i in range(1, JOBS + 1)]
    with db.transaction() as c:
        c.executemany("INSERT INTO jobs(id, key, sop_instance_uid, calling_ae, origin, state,"
                      " code, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.connection().execute("ANALYZE")
    return SqliteJobRecords(db)


FILTERS = [browse.JobFilter(), browse.JobFilter(state="skipped"),
           browse.JobFilter(code="view"), browse.JobFilter(calling_ae="CT1"),
           browse.JobFilter(state="done", calling_ae="CT1"),
           browse.JobFilter(since=created(50_000), until=created(51_000))]


@pytest.mark.parametrize("before", [None, 60_000])
@pytest.mark.parametrize("f", FILTERS, ids=lambda f: repr(f)[10:])
def test_a_page_of_100000_jobs_is_read_through_an_index(big: SqliteJobRecords,
                                                        f: browse.JobFilter,
                                                        before: int | None) -> None:
    query, args = browse.page_query(f, before, 51)
    plan = [r["detail"] for r in big.select(f"EXPLAIN QUERY PLAN {query}", args)]
    if f == browse.JobFilter() and before is None:  # the newest 51: the key read backwards
        assert plan == ["SCAN jobs"]
        return
    assert "USING INDEX" in plan[0] or "USING INTEGER PRIMARY KEY" in plan[0], plan
    if f.since is None:  # read in id order: nothing found is sorted
        assert not any("TEMP B-TREE" in step for step in plan), plan


def test_keyset_pages_of_100000_jobs_are_the_right_rows(big: SqliteJobRecords) -> None:
    f = browse.JobFilter(state="skipped", calling_ae="CT1")  # every 70th job
    expected = [i for i in range(JOBS, 0, -1) if i % 70 == 0]
    seen, before = [], None
    for _ in range(3):
        page, before = browse.jobs_page(big, f, before, 50)
        seen += [j.id for j in page]
        assert all(j.state == "skipped" and j.calling_ae == "CT1" for j in page)
    assert seen == expected[:150] and before == expected[149]
    f = browse.JobFilter(since=created(50_000), until=created(50_120))
    page, before = browse.jobs_page(big, f, None, 100)
    assert [j.id for j in page] == list(range(50_119, 50_019, -1)) and before == 50_020
    page, before = browse.jobs_page(big, f, before, 100)
    assert [j.id for j in page] == list(range(50_019, 49_999, -1)) and before is None


def test_a_schema_1_database_is_taken_over_with_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    c = sqlite3.connect(path)
    c.executescript(SCHEMA)
    c.execute("INSERT INTO jobs(key, origin, state, created, updated) VALUES"
              " ('incoming/a.dcm', 'dimse', 'done', 1, 2)")
    c.execute("PRAGMA user_version=1")
    c.commit()
    c.close()
    db = Database(path)
    assert db.version() == SCHEMA_VERSION == 2
    records = SqliteJobRecords(db)
    assert records.job(1).key == "incoming/a.dcm"
    browse.keep_view(records, 1, 1.0, {"findings": []}, [("Effusion", 0.5, True)])
    assert browse.view(records, 1) == {"findings": []}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.system)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlJobRecords]:
    if request.param == "sqlite":
        yield SqliteJobRecords(Database(tmp_path / "q.sqlite3"))
        return
    server = request.getfixturevalue("postgres")
    with PostgresJobRecords.connect(server.new_database(f"ui_{uuid.uuid4().hex[:12]}")) as pg:
        yield pg


def test_the_pages_queries_mean_the_same_on_every_backend(backend: SqlJobRecords) -> None:
    now = time.time()
    ids = [backend.open(f"incoming/{i}.dcm", f"1.{i}", "CT1" if i % 2 else "MOD", "dimse",
                        outcome=JobOutcome("skipped", "view", "x") if i % 3 == 0 else None)
           for i in range(1, 8)]
    backend.close(ids[0], JobOutcome.done(), [("P@h:1", ResultObject("outbox/a.dcm", "9.1",
                                                                     "1.2", "1.2.3"))])
    backend.delivery_failed(backend.deliveries_of(ids[0])[0].id, "refused", None)
    page, before = browse.jobs_page(backend, browse.JobFilter(calling_ae="CT1"), None, 2)
    assert [j.id for j in page] == [ids[6], ids[4]] and before == ids[4]
    page, before = browse.jobs_page(backend, browse.JobFilter(calling_ae="CT1"), before, 2)
    assert [j.id for j in page] == [ids[2], ids[0]] and before is None
    page, _ = browse.jobs_page(backend, browse.JobFilter(state="skipped", code="view",
                                                         since=now - 60, until=now + 60))
    assert [j.id for j in page] == [ids[5], ids[2]]
    figures = browse.overview(backend, now + 1)
    assert figures["states"] == {"done": 1, "skipped": 2, "queued": 4}
    assert figures["destinations"] == {"P@h:1": {"pending": 0, "failed": 1}}
    assert sum(b["closed"] for b in figures["bins"]) == 3
    for _ in range(2):  # a repeat overwrites
        browse.keep_view(backend, ids[0], now, {"findings": [1]}, [("Effusion", 0.7, True)])
    assert browse.view(backend, ids[0]) == {"findings": [1]}
    monitor = browse.monitor(backend, now=now)
    today = monitor["days"][-1]
    assert monitor["labels"] == {"Effusion": {today: {"n": 1, "rate": 1.0, "mean": 0.7}}}
    assert monitor["reasons"] == {"view": 2} and monitor["received"][today] == 7
    assert browse.expired_views(backend, now + 1) == [ids[0]]
    assert browse.view(backend, ids[0]) is None
