"""Scale-out (docs/scale-out.md): two receivers, two workers and a sender as separate
processes over a three-node RabbitMQ cluster and PostgreSQL, radiographs streamed by dcmtk's
dcmsend in their own transfer syntaxes, and the faults a hospital meets: a worker killed
mid-batch, a receiver killed mid-association, a broker node stopped under load, the
destination down. Whatever the node acknowledged reaches the destination as an SR; nothing
arrives twice with different content; nothing is left in any queue."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from node.bench.sleepy import save_sleepy_model
from node.broker import topology
from node.broker.messages import JobMessage
from node.jobs.postgres import PostgresJobRecords
from node.jobs.storage import INCOMING
from system.conftest import radiograph_copy
from system.peers import Receiver, free_port, wait_until
from system.scaled import Deployment, dcmsend, fingerprint, mixed_radiographs, uid_of

pytestmark = pytest.mark.timeout(900)

SLEEP_PER_BATCH_S = 0.2


@pytest.fixture(scope="module")
def pool(tmp_path_factory, rabbit, postgres, whole_model_path: Path, dcmtk) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("scaled")
    destination = Receiver("PACS", free_port(), folder / "pacs").start()
    records = postgres.new_database("scaled")
    env = {"CXR_NODE_BROKER": ",".join(rabbit.urls), "CXR_NODE_RECORDS": records}
    # a model that sleeps per batch, as a GPU would take its time: the two cores are not the
    # limit of the workers' share
    model = save_sleepy_model(folder / "sleepy.pt", SLEEP_PER_BATCH_S)
    d = Deployment(folder, model, env, records, destination, rabbit)
    for name, role in (("worker0", "work"), ("worker1", "work"), ("sender", "send"),
                       ("receiver0", "receive"), ("receiver1", "receive")):
        d.process(name, role)
    starters = [threading.Thread(target=p.start, args=(240,)) for p in d.processes.values()]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    not_up = [n for n, p in d.processes.items() if p.proc is None or p.proc.poll() is not None]
    assert not not_up, d.logs()
    yield d
    for p in d.processes.values():
        p.stop()
    destination.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory, cr_path: Path, cr_j2k_lossless_path: Path) -> list[Path]:
    return mixed_radiographs(cr_path, cr_j2k_lossless_path,
                             tmp_path_factory.mktemp("radiographs"), 120)


def stream(pool: Deployment, receiver: str, files: list[Path], name: str
           ) -> tuple[threading.Thread, dict]:
    """dcmsend ``files`` to ``receiver`` in a thread; its outcome lands in the dict."""
    out: dict = {}

    def run() -> None:
        out["rc"], out["acked"] = dcmsend(pool.processes[receiver].dicom_port, files,
                                          pool.folder / f"{name}.report")
    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_mixed_syntaxes_to_two_receivers_each_get_their_sr(pool: Deployment,
                                                           images: list[Path]) -> None:
    batch = images[:60]
    a, out_a = stream(pool, "receiver0", batch[:30], "both-a")
    b, out_b = stream(pool, "receiver1", batch[30:], "both-b")
    a.join()
    b.join()
    assert out_a["rc"] == 0 and out_b["rc"] == 0, pool.logs()
    acked = out_a["acked"] | out_b["acked"]
    assert acked == {uid_of(p) for p in batch}
    assert not pool.wait_srs(acked), pool.logs()
    pool.wait_settled()
    counts = pool.counts()
    assert counts.get("jobs_done") == 60, counts
    # both workers took a fair share of the batches
    batches = [pool.metric(w, "cxr_inference_batch_size_count") for w in ("worker0", "worker1")]
    assert min(batches) >= 0.3 * sum(batches), batches
    confirmed = pool.metric("receiver0", "cxr_broker_confirmed_total", queue=topology.JOBS)
    assert confirmed == 30
    # the workers kept each done job's view (findings) for the web page, in the shared records
    records = PostgresJobRecords.connect(pool.records_url)
    try:
        [row] = records.select("SELECT COUNT(*) AS n FROM job_views")
    finally:
        records.disconnect()
    assert row["n"] >= 60


def test_a_worker_killed_mid_batch_loses_nothing(pool: Deployment, images: list[Path]) -> None:
    batch = images[60:76]
    victim = pool.processes["worker0"]
    before = pool.metric("worker0", "cxr_inference_batch_size_count")
    redelivered = pool.metric("worker1", "cxr_broker_redelivered_total")
    sending, out = stream(pool, "receiver0", batch, "kill-worker")
    wait_until(lambda: pool.metric("worker0", "cxr_inference_batch_size_count") > before,
               120, 0.02, "worker0 to start a batch")
    victim.kill9()
    sending.join()
    assert out["rc"] == 0 and out["acked"] == {uid_of(p) for p in batch}
    assert not pool.wait_srs(out["acked"]), pool.logs()
    assert pool.metric("worker1", "cxr_broker_redelivered_total") > redelivered
    victim.start(240)
    pool.wait_settled()


def test_a_receiver_killed_mid_association_loses_nothing_it_acknowledged(
        pool: Deployment, tmp_path: Path, cr_path: Path) -> None:
    # full-size radiographs (7 MB each): the association lasts long enough to be cut
    batch = [radiograph_copy(cr_path, tmp_path / f"full{i}.dcm", f"full{i}") for i in range(30)]
    victim = pool.processes["receiver0"]
    start = pool.recorded()
    sending, out = stream(pool, "receiver0", batch, "kill-receiver")
    wait_until(lambda: pool.recorded() >= start + 3, 120, 0.01, "three images received")
    victim.kill9()
    sending.join()
    assert 1 <= len(out["acked"]) < len(batch)  # the association was cut
    assert not pool.wait_srs(out["acked"]), pool.logs()
    victim.start(240)  # its reconciler queues what a crash left between store and publish
    pool.wait_settled()


def test_a_broker_node_stopped_under_load(pool: Deployment, images: list[Path]) -> None:
    batch = images[96:112]
    start = pool.recorded()
    sending, out = stream(pool, "receiver1", batch, "broker-down")
    wait_until(lambda: pool.recorded() >= start + 4, 120, 0.02, "four images received")
    pool.rabbit.stop_node(0)
    try:
        sending.join()
        assert len(out["acked"]) >= 4
        assert not pool.wait_srs(out["acked"]), pool.logs()
    finally:
        pool.rabbit.start_node(0)
    rest = [p for p in batch if uid_of(p) not in out["acked"]]
    if rest:  # what was refused meanwhile, sent again as a modality would
        rc, acked = dcmsend(pool.processes["receiver1"].dicom_port, rest,
                            pool.folder / "broker-down-again.report")
        assert rc == 0 and len(acked) == len(rest), pool.logs()
        assert not pool.wait_srs(acked), pool.logs()
    pool.wait_settled()


def test_job_records_down_then_up(pool: Deployment, postgres, tmp_path: Path,
                                  cr_path: Path) -> None:
    """PostgreSQL stopped under load: receivers refuse (0xA700) what they cannot record,
    workers and the sender keep what they hold and finish it once it is back; nothing goes
    to the dead-letter queue."""
    batch = [radiograph_copy(cr_path, tmp_path / f"pg{i}.dcm", f"pg{i}", downscale=2)
             for i in range(12)]
    start = pool.recorded()
    sending, out = stream(pool, "receiver1", batch, "records-down")
    wait_until(lambda: pool.recorded() >= start + 3, 120, 0.01, "three images received")
    postgres.stop()
    try:
        wait_until(lambda: not sending.is_alive() or pool.processes["worker0"].log_text()
                   .count("unavailable") > 0, 60, 0.2, "a role to meet the outage")
    finally:
        postgres.start()
    sending.join()
    assert len(out["acked"]) >= 3
    assert not pool.wait_srs(out["acked"]), pool.logs()
    pool.wait_settled()
    assert pool.queue_depths()[topology.DEAD] == 0


def test_destination_down_then_up(pool: Deployment, images: list[Path]) -> None:
    batch = images[112:118]
    retried = pool.metric("sender", "cxr_broker_retried_total")
    pool.destination.stop()
    try:
        rc, acked = dcmsend(pool.processes["receiver1"].dicom_port, batch,
                            pool.folder / "destination-down.report")
        assert rc == 0 and len(acked) == len(batch)
        wait_until(lambda: pool.metric("sender", "cxr_broker_retried_total") > retried, 120,
                   0.2, "a delivery to be put in a retry queue")
    finally:
        pool.destination.start()
    assert not pool.wait_srs(acked), pool.logs()
    pool.wait_settled()
    assert pool.counts().get("deliveries_failed", 0) == 0


def test_score_is_answered_by_the_pool(pool: Deployment, images: list[Path]) -> None:
    receiver = pool.processes["receiver1"]
    request = urllib.request.Request(f"{receiver.url}/score", data=images[118].read_bytes(),
                                     headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(request, timeout=120) as r:
        document = json.loads(r.read())
    assert len(document["top_three_labels"]) == 3
    assert document["result_uids"]["sr"].startswith("2.25.") or document["result_uids"]["sr"]


def test_unreadable_and_dangling_messages_go_to_the_dead_letter_queue(
        pool: Deployment, images: list[Path]) -> None:
    params = pika.URLParameters(pool.rabbit.url(1))
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("", topology.JOBS, b"{not json", mandatory=True)
    records = PostgresJobRecords.connect(pool.records_url)
    try:
        job_id = records.open(f"{INCOMING}/gone.dcm", "1.2.3.4", "MOD", "dimse")
    finally:
        records.disconnect()
    _status, ready = pool.processes["worker1"].get("/readyz")
    model = ready["model"]
    dangling = JobMessage(job_id, f"{INCOMING}/gone.dcm", "0" * 64, "1.2.3.4", "MOD", "dimse",
                          1.0e9, model["sha256"], "torch")
    channel.basic_publish("", topology.JOBS, dangling.encode(), mandatory=True)
    wait_until(lambda: pool.queue_depths()[topology.DEAD] >= 2, 120, 0.2,
               "both messages in the dead-letter queue")
    reasons = []
    for _ in range(2):
        _method, props, _body = channel.basic_get(topology.DEAD, auto_ack=True)
        reasons.append(props.headers[topology.REASON_HEADER])
    connection.close()
    assert any(r.startswith("unreadable: not a JSON message") for r in reasons), reasons
    assert any(r.startswith("missing-object: incoming/gone.dcm") for r in reasons), reasons
    # the workers kept going
    rc, acked = dcmsend(pool.processes["receiver0"].dicom_port, [images[119]],
                        pool.folder / "after-dead.report")
    assert rc == 0 and not pool.wait_srs(acked)


def test_a_wrong_broker_is_one_line_and_exit_2(pool: Deployment, whole_model_path: Path
                                               ) -> None:
    port = free_port()
    proc = subprocess.run(
        [*pool.processes["receiver0"].command()[:1], "serve", "--role", "receive",
         "--model", str(whole_model_path), "--spool", str(pool.folder / "wrong")],
        env={**os.environ, "CXR_NODE_BROKER": f"amqp://cxr:s3cret@127.0.0.1:{port}/",
             "CXR_NODE_RECORDS": pool.records_url},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cxr-node serve")]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], proc.stderr
    assert "s3cret" not in proc.stderr


def test_at_the_end_nothing_is_left_and_nothing_differs(pool: Deployment) -> None:
    pool.wait_settled()
    depths = pool.queue_depths()
    assert all(n == 0 for n in depths.values()), depths
    for uid, copies in pool.results().items():
        assert len({fingerprint(c) for c in copies}) == 1, f"{uid} arrived with differences"
    counts = pool.counts()
    assert counts.get("deliveries_failed", 0) == 0 and counts.get("jobs_failed", 0) == 1
