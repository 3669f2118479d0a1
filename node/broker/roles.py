"""A node process of a scaled deployment: one or all of the roles, over a RabbitMQ broker,
a shared object store and PostgreSQL job records (docs/scale-out.md).

Same package, same settings as the embedded node; :class:`ScaledNode` only assembles other
parts behind the same three interfaces (object storage, job queue, job records).
"""

from __future__ import annotations

import logging

from inference import LoadedModel, configure_threads, load_model
from node.broker import topology
from node.broker.client import Publisher, parameters, redact
from node.broker.consumer import Consumer
from node.broker.receiver import BrokerIntake, BrokerJobQueue, PoolModel, reconcile
from node.broker.sender import BATCH, BrokerSender
from node.broker.worker import BrokerWorker
from node.core.errors import OutOfResourcesError
from node.core.pipeline import Pipeline
from node.dimse.scp import make_scp, scp_handlers, start_scp
from node.jobs.intake import Handoff, Intake
from node.jobs.postgres import PostgresJobRecords
from node.jobs.storage import SpoolStore
from node.service import Node
from node.settings import Settings

logger = logging.getLogger(__name__)

ROLES = ("receive", "work", "send")
#: Seconds of silence after which the broker closes a consumer's connection.
CONSUMER_HEARTBEAT_S = 600


def broker_parameters(settings: Settings, name: str, heartbeat_s: int = 60) -> list:
    """pika's connection parameters for each URL of ``settings.broker``."""
    client = ((settings.broker_client_cert, settings.broker_client_key)
              if settings.broker_client_cert is not None else None)
    return parameters(settings.broker, credentials_file=settings.broker_credentials_file,
                      ca_file=settings.broker_ca, client_cert=client, heartbeat_s=heartbeat_s,
                      name=name)


def engine_of(model: LoadedModel) -> str:
    """The engine that scores: ONNX Runtime once a session is on, else the model's own."""
    return "onnx" if model.session is not None else model.backend


def pool_engine(settings: Settings, model: LoadedModel) -> str:
    """The engine the pool is configured to score with (what receivers stamp on jobs)."""
    exportable = model.backend == "torch" and model.module is not None
    return "onnx" if model.backend == "onnx" or (settings.onnx_fast_path and exportable) \
        else model.backend


class ScaledNode(Node):
    """The roles of ``settings.role`` in this process, each a thread (or the DIMSE server)."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None) -> None:
        if settings.broker is None or settings.records is None:
            raise ValueError("a scaled node needs a broker and shared job records")
        self.roles = set(ROLES) if settings.role == "all" else {settings.role}
        self.delays = topology.retry_delays(settings.retry_initial_s, settings.retry_max_s,
                                            settings.retry_max_attempts)
        self.params = broker_parameters(settings, f"cxr-node {settings.role}")
        self.publisher = Publisher(settings.broker, self.params, self.delays,
                                   settings.broker_timeout_s)
        super().__init__(settings, model)

    @property
    def receives(self) -> bool:
        return "receive" in self.roles

    def ready_line(self) -> str:
        roles = ", ".join(r for r in ROLES if r in self.roles)
        front = super().ready_line() if self.receives else f"HTTP {self.http_port}"
        return f"roles {roles}; {front}"

    def _refuse(self, reason: str) -> None:
        """A worker met jobs for another model: this process is not ready any more."""
        self.refused = reason

    def make_jobs(self) -> tuple[SpoolStore, PostgresJobRecords, Intake]:
        s = self.settings
        store = SpoolStore(s.store or s.spool,
                           int(s.spool_quota_mb * 2**20) if s.spool_quota_mb else None,
                           int(s.min_free_mb * 2**20), shared=True)
        records = PostgresJobRecords.connect(s.records)
        # the pool's model is known once loaded (start); jobs are published after that
        queue = BrokerJobQueue(self.publisher, PoolModel("", ""))
        intake = BrokerIntake(store, queue, records, handoff=Handoff(0),
                              purge=s.purge_delivered, checksums=True, audit=self.audit)
        return store, records, intake

    def consumer(self, queues: list[str], prefetch: int) -> Consumer:
        """A consumer's connection: a long heartbeat, since no heartbeat is sent while the
        model runs between two calls into pika."""
        params = broker_parameters(self.settings, f"cxr-node {self.settings.role}",
                                   CONSUMER_HEARTBEAT_S)
        return Consumer(self.settings.broker, params, queues, prefetch, self.delays)

    def start(self) -> None:
        """Connect, load the model, start the roles; the receiver last, once the others can
        take work. A broker or database lost during the start is the operator's to look
        at: raised as ``ValueError`` (one line, exit 2)."""
        try:
            self._start()
        except OutOfResourcesError as e:
            raise ValueError(str(e)) from e

    def _start(self) -> None:
        s = self.settings
        self.publisher.start_connected()
        configure_threads(s.threads)
        if self.model is None and self.roles != {"send"}:
            self.model = load_model(s.model, card=s.card, cache_dir=s.weights_cache)
        if self.model is not None:
            self.intake.queue.pool = PoolModel(self.model.sha256, pool_engine(s, self.model))
        if "work" in self.roles:
            self._start_workers()
        if "send" in self.roles:
            self.sender = BrokerSender(s, self.records, self.store, self.stop_event,
                                       self.publisher, self.consumer([topology.DELIVER],
                                                                     2 * BATCH),
                                       self.audit)
            self.sender.start()
        if "receive" in self.roles:
            reconcile(self.intake, s.reconcile_grace_s, s.score_timeout_s)
            self.scp = make_scp(s, self.intake)
            self.server = start_scp(self.scp, (s.bind, s.dicom_port),
                                    scp_handlers(self.intake), s.server_ssl_context())
        self.ready.set()
        self.audit.application_start()
        logger.info("roles %s on broker %s (model %s)", ", ".join(sorted(self.roles)),
                    redact(s.broker), self.model.sha256[:12] if self.model else "-")

    def _start_workers(self) -> None:
        """The model settled before any job is taken: the fast path exported now (not in the
        background), so that this worker's engine is the pool's from its first result."""
        s = self.settings
        self.model.session_batch = s.onnx_run_batch
        if s.onnx_fast_path:
            from functools import partial

            from inference.export import export_onnx_isolated

            self._enable_fast_path(partial(export_onnx_isolated, cache_dir=s.weights_cache))
        mine = PoolModel(self.model.sha256, engine_of(self.model))
        if mine != self.intake.queue.pool:
            raise ValueError(f"this worker would score with {mine.engine}, the pool with "
                             f"{self.intake.queue.pool.engine}: it refuses work")
        self.pipeline = Pipeline(self.model, s.explain, batch_size=s.batch_size,
                                 explained_findings=s.explained_findings,
                                 parametric_map=s.parametric_map,
                                 capture_syntax=s.capture_syntax)
        self.warm_up()
        for i in range(s.workers):
            worker = BrokerWorker(f"worker-{i}", s, self.intake, self.pipeline,
                                  self.stop_event, self.publisher,
                                  self.consumer([topology.JOBS, topology.SCORE],
                                                2 * s.batch_size), mine)
            worker.on_refused = self._refuse
            worker.start()
            self.workers.append(worker)

    def stop(self, timeout: float = 60) -> None:
        super().stop(timeout)
        self.publisher.stop()
        self.records.disconnect()
