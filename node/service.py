"""The running node: model, spool, queue, DIMSE server, workers and sender in one process."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from inference import LoadedModel, configure_threads, load_model
from node.audit import AuditTrail
from node.core.memory import trim
from node.core.pipeline import Pipeline
from node.dimse.scp import make_scp, scp_handlers, start_scp
from node.jobs.intake import Handoff, Intake
from node.jobs.queue import SqliteJobQueue
from node.jobs.records import SqliteJobRecords
from node.jobs.sender import Sender
from node.jobs.sqlite import Database
from node.jobs.storage import SpoolStore
from node.jobs.views import ViewWorker
from node.jobs.worker import Worker
from node.settings import Settings

logger = logging.getLogger(__name__)


class Node:
    """Start with :meth:`start`, stop with :meth:`stop` (or SIGTERM in :meth:`serve_forever`)."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None) -> None:
        self.settings = settings
        self.model = model
        self.stop_event = threading.Event()
        self.http_server = None
        self.http_thread: threading.Thread | None = None
        #: the audit trail (IHE ATNA) every part of this process reports to
        self.audit = AuditTrail.from_settings(settings)
        self.store, self.records, self.intake = self.make_jobs()
        self.workers: list[Worker] = []
        self.sender = Sender(settings, self.records, self.store, self.stop_event, self.audit)
        self.scp = None
        self.server = None
        self.ready = threading.Event()
        self.started_at = time.monotonic()
        #: ONNX Runtime fast path: "on", "off" or "pending" (exporting in the background).
        self.fast_path = "off"
        #: why this node refuses work (a scaled worker with another model than the pool's)
        self.refused: str | None = None

    @property
    def receives(self) -> bool:
        """Whether this process takes images in (C-STORE, STOW-RS, ``/score``)."""
        return True

    def make_jobs(self) -> tuple[SpoolStore, SqliteJobRecords, Intake]:
        """The embedded default of the three interfaces: a spool folder and one SQLite file
        holding the queue and the records."""
        settings = self.settings
        store = SpoolStore(settings.spool,
                           int(settings.spool_quota_mb * 2**20) if settings.spool_quota_mb
                           else None, int(settings.min_free_mb * 2**20))
        db = Database(settings.spool / "queue.sqlite3")
        records = SqliteJobRecords(db)
        # DIMSE is never refused for depth (a modality cannot wait); HTTP is (503).
        intake = Intake(store, SqliteJobQueue(db), records,
                        handoff=Handoff(int(settings.handoff_mb * 2**20)),
                        purge=settings.purge_delivered, audit=self.audit)
        return store, records, intake

    @property
    def dicom_port(self) -> int:
        return int(self.server.server_address[1]) if self.server else self.settings.dicom_port

    def start(self) -> None:
        s = self.settings
        configure_threads(s.threads)
        if self.model is None:
            self.model = load_model(s.model, card=s.card, cache_dir=s.weights_cache)
        self.model.session_batch = s.onnx_run_batch
        export = s.onnx_fast_path and self._start_fast_path()
        self.pipeline = Pipeline(self.model, s.explain, batch_size=s.batch_size,
                                 explained_findings=s.explained_findings,
                                 parametric_map=s.parametric_map,
                                 capture_syntax=s.capture_syntax)
        self.warm_up()
        recovered = self.intake.recover()
        if recovered:
            logger.info("recovered %d job(s) from the spool", recovered)
        for i in range(s.workers):
            worker = ViewWorker(f"worker-{i}", s, self.intake, self.pipeline,
                                self.stop_event)
            worker.start()
            self.workers.append(worker)
        self.sender.start()
        self.scp = make_scp(s, self.intake)
        self.server = start_scp(self.scp, (s.bind, s.dicom_port), scp_handlers(self.intake),
                                s.server_ssl_context())
        self.ready.set()
        self.audit.application_start()
        if export:
            self._export_in_background()
        logger.info("%s listening for DICOM on %s:%d (model %s %s, sha256 %s)", s.ae_title,
                    s.bind, self.dicom_port, self.model.card.name, self.model.card.version,
                    self.model.sha256[:12])

    def _start_fast_path(self) -> bool:
        """ONNX Runtime for prediction: at once from a cached export (or a model that is ONNX
        already); else say it is pending and return True: :meth:`_export_in_background`
        exports it once the node is ready."""
        from inference.export import onnx_cache_path

        exportable = self.model.backend == "torch" and self.model.module is not None
        if exportable and not onnx_cache_path(self.model,
                                              self.settings.spool / "onnx-cache").is_file():
            self.fast_path = "pending"
            return True
        self._enable_fast_path(exporter=None)
        return False

    def _enable_fast_path(self, exporter) -> None:
        from inference.export import enable_onnx_fast_path

        try:
            on = enable_onnx_fast_path(self.model, self.settings.spool / "onnx-cache",
                                       exporter=exporter)
        except Exception:  # the fast path is optional: PyTorch keeps predicting
            logger.exception("ONNX fast path failed; predicting with PyTorch")
            on = False
        self.fast_path = "on" if on else "off"
        trim()  # the parity check's PyTorch forward left its activations in the heap

    def _export_in_background(self) -> None:
        """Export to ONNX in a child process while PyTorch predicts (the node is ready
        sooner, and the export's memory never enters the node); results name the backend
        that scored them."""
        from functools import partial

        from inference.export import export_onnx_isolated

        logger.info("exporting the model to ONNX in the background; PyTorch predicts meanwhile")
        exporter = partial(export_onnx_isolated, cache_dir=self.settings.weights_cache)
        threading.Thread(target=self._enable_fast_path, args=(exporter,), name="onnx-export",
                         daemon=True).start()

    def warm_up(self) -> None:
        """One synthetic image through prediction and the explanation, and the SR stencils
        made, so the first real image pays no first-call costs (allocations, medcam hooks,
        ONNX Runtime arenas, stencils)."""
        import numpy as np

        from domain import SourceImage

        image = SourceImage("warm-up", np.linspace(0, 255, 256 * 256, dtype=np.float32)
                            .reshape(256, 256).astype(np.uint8), 255)
        started = time.monotonic()
        self.pipeline.run(image, build_dicom=False)
        if self.pipeline.builder is not None:
            stencils = self.pipeline.builder.prepare()
            logger.info("SR measurement groups %s", "from stencils" if stencils
                        else "built by highdicom (no stencil)")
        logger.info("warmed up in %.1f s", time.monotonic() - started)

    @property
    def http_port(self) -> int | None:
        if self.http_server is None or not self.http_server.servers:
            return self.settings.http_port
        return int(self.http_server.servers[0].sockets[0].getsockname()[1])

    def start_http(self) -> None:
        """Serve the HTTP app (uvicorn) in a thread of this process."""
        import uvicorn

        from node.http import create_app
        from node.http.protocol import body_protocol

        s = self.settings
        tls = {}
        if s.tls_cert is not None:
            import ssl

            tls = {"ssl_certfile": str(s.tls_cert), "ssl_keyfile": str(s.tls_key)}
            if s.tls_ca is not None:
                tls["ssl_ca_certs"] = str(s.tls_ca)
                tls["ssl_cert_reqs"] = (ssl.CERT_REQUIRED if s.tls_require_client_cert
                                        else ssl.CERT_OPTIONAL)
        config = uvicorn.Config(create_app(self), host=s.bind, port=s.http_port,
                                log_level="warning", timeout_keep_alive=30, access_log=False,
                                limit_concurrency=max(64, 4 * s.max_associations),
                                h11_max_incomplete_event_size=64 * 1024,
                                http=body_protocol(), **tls)
        self.http_server = uvicorn.Server(config)
        self.http_thread = threading.Thread(target=self.http_server.run, name="http",
                                            daemon=True)
        self.http_thread.start()
        deadline = time.monotonic() + 30
        while not self.http_server.started and time.monotonic() < deadline:
            if not self.http_thread.is_alive():
                raise OSError(f"HTTP server could not start on port {self.settings.http_port}")
            time.sleep(0.05)
        logger.info("HTTP on %s:%s", self.settings.bind, self.http_port)

    def stop(self, timeout: float = 60) -> None:
        """Stop taking new work, let work in flight finish (it is persisted either way)."""
        logger.info("stopping")
        if self.http_server is not None:
            self.http_server.should_exit = True
            if self.http_thread is not None:
                self.http_thread.join(10)
        if self.scp is not None:
            self.scp.shutdown()
        self.stop_event.set()
        self.intake.wake.set()
        self.sender.wake.set()
        deadline = time.monotonic() + timeout
        for thread in [*self.workers, self.sender]:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        self.audit.application_stop()
        self.audit.close()
        logger.info("stopped")

    def ready_line(self) -> str:
        """What the ready line says this process serves."""
        return (f"DICOM {self.settings.ae_title}@{self.settings.bind}:{self.dicom_port}, "
                f"HTTP {self.http_port}")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        done = threading.Event()

        def _signal(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d received", signum)
            done.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        if self.settings.http_port is not None:
            self.start_http()
        print(f"cxr-node ready: {self.ready_line()}", flush=True)
        # With a timeout: the kernel may deliver the signal to any of the process's threads
        # (ONNX Runtime's, OpenMP's, ...); the main thread runs Python's handler only when it
        # wakes, and a wait without a timeout might never wake.
        while not done.wait(0.5):
            pass
        self.stop()
