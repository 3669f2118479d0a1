"""Waiting for a job's outcome (synchronous HTTP scoring through the shared worker)."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass

from node.core.pipeline import Outcome
from node.jobs.queue import Job


@dataclass(frozen=True)
class Closed:
    job: Job
    state: str
    outcome: Outcome | None
    reason: str | None


class Waiters:
    """Futures per job id; outcomes that arrive before anyone waits are kept until asked."""

    def __init__(self, origins: tuple[str, ...] = ("http",)) -> None:
        self.origins = origins
        self._lock = threading.Lock()
        self._futures: dict[int, Future] = {}
        self._early: dict[int, Closed] = {}

    def listener(self, job: Job, state: str, outcome: Outcome | None, reason: str | None):
        if job.origin not in self.origins:
            return
        closed = Closed(job, state, outcome, reason)
        with self._lock:
            future = self._futures.pop(job.id, None)
            if future is None:
                self._early[job.id] = closed
        if future is not None:
            future.set_result(closed)

    def wait_for(self, job_id: int) -> Future:
        future: Future = Future()
        with self._lock:
            early = self._early.pop(job_id, None)
            if early is None:
                self._futures[job_id] = future
        if early is not None:
            future.set_result(early)
        return future

    def forget(self, job_id: int) -> None:
        with self._lock:
            self._futures.pop(job_id, None)
            self._early.pop(job_id, None)
