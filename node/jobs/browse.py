"""What the operators' page (``/ui``) reads from the job records: a filtered page of jobs,
the overview's figures, a job's view, the model monitor's daily figures.

Written once for every SQL backend (SQLite and PostgreSQL), through
:class:`~node.jobs.sql.SqlJobRecords`' public ``select``/``execute``. Paging is keyset
paging (``id < last id seen``, newest first) on an index of each filter
(``jobs_state``, ``jobs_code``, ``jobs_calling_ae``: ``(column, id)``), so a page costs the
same with 100,000 jobs as with 100.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from node.jobs.model import JobRecord
from node.jobs.sql import Rows, SqlJobRecords, job_record

DAY_S = 86400
#: The overview's chart: the last hour in bins of this many seconds.
BIN_S = 300


@dataclass(frozen=True)
class JobFilter:
    """The jobs list's filters; ``None`` is "any". Times are epoch seconds (``created``)."""

    state: str | None = None
    code: str | None = None
    calling_ae: str | None = None
    since: float | None = None
    until: float | None = None


def page_query(f: JobFilter, before: int | None, limit: int) -> tuple[str, list[Any]]:
    """The statement of one page of jobs, newest first, older than job ``before``."""
    where, args = [], []
    for column in ("state", "code", "calling_ae"):
        value = getattr(f, column)
        if value is not None:
            where.append(f"{column}=?")
            args.append(value)
    if f.since is not None:
        where.append("created>=?")
        args.append(f.since)
    if f.until is not None:
        where.append("created<?")
        args.append(f.until)
    if before is not None:
        where.append("id<?")
        args.append(before)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT * FROM jobs{clause} ORDER BY id DESC LIMIT ?", [*args, limit]


def jobs_page(records: SqlJobRecords, f: JobFilter, before: int | None = None,
              limit: int = 50) -> tuple[list[JobRecord], int | None]:
    """Up to ``limit`` jobs and the ``before`` of the next page (``None``: the last page)."""
    query, args = page_query(f, before, limit + 1)
    jobs = [job_record(r) for r in records.select(query, args)]
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, (jobs[-1].id if more and jobs else None)


def overview(records: SqlJobRecords, now: float | None = None) -> dict[str, Any]:
    """Jobs by state, deliveries not sent per destination, and the last hour in bins: jobs
    closed and the mean latency (received to closed) of those done."""
    now = time.time() if now is None else now
    start = now - 3600

    def work(rows: Rows) -> dict[str, Any]:
        states = {r["state"]: int(r["n"]) for r in
                  rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", ())}
        destinations: dict[str, dict[str, int]] = defaultdict(lambda: {"pending": 0,
                                                                       "failed": 0})
        for r in rows("SELECT destination, state, COUNT(*) AS n FROM deliveries WHERE"
                      " state IN ('pending', 'failed') GROUP BY destination, state", ()):
            destinations[r["destination"]][r["state"]] = int(r["n"])
        bins = [{"start": start + i * BIN_S, "closed": 0, "done": 0, "latency_sum": 0.0}
                for i in range(3600 // BIN_S)]
        for r in rows("SELECT state, created, updated FROM jobs WHERE updated>=? AND"
                      " state IN ('done', 'skipped', 'failed')", (start,)):
            i = min(int((r["updated"] - start) // BIN_S), len(bins) - 1)
            bins[i]["closed"] += 1
            if r["state"] == "done":
                bins[i]["done"] += 1
                bins[i]["latency_sum"] += max(0.0, r["updated"] - r["created"])
        for b in bins:
            b["latency_s"] = b["latency_sum"] / b["done"] if b["done"] else None
        return {"states": states, "destinations": dict(sorted(destinations.items())),
                "bins": bins}

    return records.reading(work)


def keep_view(records: SqlJobRecords, job_id: int, created: float, summary: dict[str, Any],
              findings: list[tuple[str, float, bool]]) -> None:
    """Keep what the job page shows of a done job and its findings for the monitor (the
    same job kept twice, a repeat, overwrites)."""
    day = int(created // DAY_S)
    records.execute("INSERT INTO job_views(job_id, created, summary) VALUES (?, ?, ?)"
                    " ON CONFLICT(job_id) DO UPDATE SET created=excluded.created,"
                    " summary=excluded.summary", (job_id, created, json.dumps(summary)))
    records.execute_many("INSERT INTO job_findings(job_id, label, day, probability, positive)"
                         " VALUES (?, ?, ?, ?, ?) ON CONFLICT(job_id, label) DO UPDATE SET"
                         " day=excluded.day, probability=excluded.probability,"
                         " positive=excluded.positive",
                         [(job_id, label, day, float(probability), int(positive))
                          for label, probability, positive in findings])


def view(records: SqlJobRecords, job_id: int) -> dict[str, Any] | None:
    """The kept view of a job, or ``None`` (declined, not done yet, or past retention)."""
    rows = records.select("SELECT summary FROM job_views WHERE job_id=?", (job_id,))
    return json.loads(rows[0]["summary"]) if rows else None


def expired_views(records: SqlJobRecords, before: float, findings_before: float | None = None
                  ) -> list[int]:
    """Job ids whose view was kept before ``before``, and forget them, and the findings of
    days before ``findings_before`` (default ``before``); the caller deletes their files."""
    ids = [int(r["job_id"]) for r in
           records.select("SELECT job_id FROM job_views WHERE created<?", (before,))]
    records.execute("DELETE FROM job_views WHERE created<?", (before,))
    cutoff = before if findings_before is None else findings_before
    records.execute("DELETE FROM job_findings WHERE day<?", (int(cutoff // DAY_S),))
    return ids


def monitor(records: SqlJobRecords, days: int = 30, now: float | None = None
            ) -> dict[str, Any]:
    """Per label and day (UTC) over the last ``days``: jobs scored, positive rate, mean
    probability; per day, inputs received and those the gate declined, by reason."""
    now = time.time() if now is None else now
    today = int(now // DAY_S)
    first = today - days + 1

    def work(rows: Rows) -> dict[str, Any]:
        labels: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
        for r in rows("SELECT day, label, COUNT(*) AS n, SUM(positive) AS positives,"
                      " AVG(probability) AS mean FROM job_findings WHERE day>=?"
                      " GROUP BY day, label", (first,)):
            n = int(r["n"])
            labels[r["label"]][int(r["day"])] = {"n": n, "rate": int(r["positives"]) / n,
                                                 "mean": float(r["mean"])}
        received: dict[int, int] = {}
        declined: dict[int, dict[str, int]] = {}
        reasons: dict[str, int] = defaultdict(int)
        for day in range(first, today + 1):
            total, by_code = 0, {}
            for r in rows("SELECT state, code, COUNT(*) AS n FROM jobs WHERE created>=? AND"
                          " created<? GROUP BY state, code",
                          (day * DAY_S, (day + 1) * DAY_S)):
                total += int(r["n"])
                if r["state"] == "skipped":
                    by_code[r["code"] or "-"] = int(r["n"])
                    reasons[r["code"] or "-"] += int(r["n"])
            received[day], declined[day] = total, by_code
        return {"days": list(range(first, today + 1)), "labels": dict(sorted(labels.items())),
                "received": received, "declined": declined,
                "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}

    return records.reading(work)
