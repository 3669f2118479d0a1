"""One model forward for the requests that wait together in one scoring process.

Under ``azmlinfsrv`` with several gunicorn threads (``GUNICORN_CMD_ARGS="--threads N"``), each
request reads, decodes and preprocesses its image in its own thread; :class:`Batcher` then
gives the model inputs of all requests waiting at that moment to a single runner thread,
which runs one forward for all of them and hands each request its own row back.

Why one runner rather than a forward per request thread: the forward already uses every
core it is given (PyTorch or ONNX Runtime intra-op threads), so two at once only make two
thread pools fight over the same cores and hold two sets of activations; on a GPU a batch
costs little more than one image. Requests that arrive while a forward runs wait for the
next one and go together: under load the batches fill by themselves, and a lone request
never waits for company. ``max_wait_s`` adds a short wait for requests that are still being
decoded (announced with :meth:`Batcher.expect`); it is 0 by default because on a CPU a
batch is no faster per image than single images (ONNX Runtime's convolutions cost the same
per image), so waiting only adds latency there. On a GPU a few milliseconds are worth it.

The decoders (pydicom's pixel handlers, pylibjpeg) hold the GIL, so request threads do not
decode in parallel: the threads overlap one request's decoding with another's forward and
with network reads. Parallel decoding takes more processes (``WORKER_COUNT``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import numpy as np

logger = logging.getLogger(__name__)


class Batcher:
    """Runs ``forward`` on the stacked inputs of the requests waiting together.

    ``forward(batch)`` takes ``(N, ...)`` inputs and gives ``(N, ...)`` outputs; it runs only
    on the runner thread (started at the first request, so a process forked after this
    object was made gets its own). At most ``max_batch`` inputs go into one forward.
    """

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], max_batch: int = 8,
                 max_wait_s: float = 0.0, name: str = "batcher") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch!r} must be >= 1")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s {max_wait_s!r} must be >= 0")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.name = name
        self._cond = threading.Condition()
        self._waiting: list[tuple[np.ndarray, Future]] = []
        self._expected = 0
        self._runner: threading.Thread | None = None
        #: Forwards run so far by batch size (for tests and tuning: how full batches get).
        self.batch_sizes: Counter[int] = Counter()

    @property
    def forwards(self) -> int:
        """Forward passes run so far."""
        return sum(self.batch_sizes.values())

    @property
    def images(self) -> int:
        """Inputs that went through a forward so far."""
        return sum(size * count for size, count in self.batch_sizes.items())

    def waiting(self) -> int:
        """Inputs queued for the next forward now."""
        with self._cond:
            return len(self._waiting)

    @contextlib.contextmanager
    def expect(self) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
        """Announce an input still being prepared (read, decoded); the context gives the
        function that submits it (once) and returns its output.

        While announced, a forward with room waits up to ``max_wait_s`` for it; the
        announcement ends when the input is submitted or the context exits (a refused
        request), whichever comes first.
        """
        announced = True
        with self._cond:
            self._expected += 1

        def submit(item: np.ndarray) -> np.ndarray:
            nonlocal announced
            if not announced:
                raise RuntimeError("an announced input is submitted once")
            announced = False
            return self._submit(item, announced=True)

        try:
            yield submit
        finally:
            if announced:
                with self._cond:
                    self._expected -= 1
                    self._cond.notify_all()

    def __call__(self, item: np.ndarray) -> np.ndarray:
        """``forward`` of one input (without the batch axis), run with whatever else waits;
        its error, if it fails, is raised here (in every request of that forward)."""
        return self._submit(item, announced=False)

    def _submit(self, item: np.ndarray, announced: bool) -> np.ndarray:
        future: Future = Future()
        with self._cond:
            if self._runner is None or not self._runner.is_alive():
                self._runner = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._runner.start()
            self._waiting.append((item, future))
            if announced:  # arrived: in the same step, so the runner never misses it
                self._expected -= 1
            self._cond.notify_all()
        return future.result()

    def _take(self) -> list[tuple[np.ndarray, Future]]:
        """The next batch: what waits now, after at most ``max_wait_s`` for announced inputs
        while there is room."""
        with self._cond:
            while not self._waiting:
                self._cond.wait()
            if self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s
                while len(self._waiting) < self.max_batch and self._expected > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch = self._waiting[:self.max_batch]
            del self._waiting[:self.max_batch]
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            futures = [future for _, future in batch]
            try:
                outputs = self.forward(np.stack([item for item, _ in batch]))
                if len(outputs) != len(batch):
                    raise RuntimeError(f"forward gave {len(outputs)} outputs for "
                                       f"{len(batch)} inputs")
            except BaseException as e:  # each request of this batch answers its own 500
                for future in futures:
                    future.set_exception(e)
                continue
            finally:
                self.batch_sizes[len(batch)] += 1
            for future, output in zip(futures, outputs, strict=True):
                future.set_result(output)
