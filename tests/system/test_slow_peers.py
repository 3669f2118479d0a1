"""Slow peers are cut off by timeouts without slowing the others: an HTTP client that sends
its body a byte at a time (slowloris) gets 408 and a closed connection
(``http_body_timeout_s``); a DICOM peer that stops sending in the middle of a PDU loses its
association (``network_timeout_s``). Meanwhile every other client is served: checked by
outcome (their requests complete while the slow peers are still connected), not by timing."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from node.http.multipart import build_related
from system.conftest import radiograph_copy
from system.peers import NodeProcess, Receiver, free_port, storescu, wait_until

BODY_TIMEOUT_S = 12
NETWORK_TIMEOUT_S = 12
#: How long a slow peer may last before the test calls its timeout broken.
CUT_OFF_DEADLINE_S = 90
SLOW_CLIENTS = 6


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory, whole_model_path: Path,
          dcmtk) -> Iterator[tuple[NodeProcess, Receiver]]:
    folder = tmp_path_factory.mktemp("slow")
    pacs = Receiver("PACS", free_port(), folder / "pacs").start()
    node = NodeProcess(folder / "spool", whole_model_path, [pacs.address], explain="none",
                       env={"CXR_NODE_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
                            "CXR_NODE_NETWORK_TIMEOUT_S": str(NETWORK_TIMEOUT_S)})
    try:
        node.start()
        yield node, pacs
    finally:
        node.stop()
        pacs.stop()


def still_open(sock: socket.socket) -> bool:
    """Whether the node has neither answered nor closed ``sock`` yet."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def read_until_closed(sock: socket.socket, deadline_s: float) -> bytes:
    """Everything the node sends on ``sock`` until it closes it (``TimeoutError`` if it does
    not within ``deadline_s``)."""
    sock.settimeout(deadline_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


class Slowloris(threading.Thread):
    """A STOW-RS request whose headers arrive at once and whose body then trickles in a byte
    every 0.2 s; it stops when the node closes the connection."""

    def __init__(self, port: int, body: bytes, content_type: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode())
        self.body = body
        self.stop = threading.Event()

    def run(self) -> None:
        for byte in self.body:
            if self.stop.wait(0.2):
                return
            try:
                self.sock.send(bytes([byte]))
            except OSError:  # the node closed the connection
                return


class StallingProxy(threading.Thread):
    """A TCP relay between a DICOM peer and the node that passes the first ``limit`` bytes
    the peer sends, then stops: the node sees a PDU cut off in its middle, from a peer that
    stays connected. ``node_closed`` is set when the node closes its side."""

    def __init__(self, node_port: int, limit: int) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.node_port = node_port
        self.limit = limit
        self.stalled = threading.Event()
        self.node_closed = threading.Event()

    def run(self) -> None:
        peer, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.node_port))
        passed = 0
        with peer, upstream:
            while not self.node_closed.is_set():
                readable, _, _ = select.select([peer, upstream], [], [], 0.5)
                if upstream in readable:
                    try:
                        data = upstream.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        self.node_closed.set()
                        break
                    with contextlib.suppress(OSError):
                        peer.sendall(data)
                if peer in readable and not self.stalled.is_set():
                    data = peer.recv(65536)
                    room = self.limit - passed
                    upstream.sendall(data[:room])
                    passed += min(len(data), room)
                    if passed >= self.limit:
                        self.stalled.set()  # what the peer sends from here on is held


def stow_one(node: NodeProcess, path: Path) -> int:
    body, content_type = build_related([path.read_bytes()])
    return httpx.post(f"{node.url}/dicomweb/studies", content=body, timeout=60,
                      headers={"Content-Type": content_type}).status_code


def test_a_byte_at_a_time_http_body_is_cut_off_and_others_are_served(
        peers: tuple[NodeProcess, Receiver], tmp_path: Path, cr_path: Path) -> None:
    node, pacs = peers
    image = radiograph_copy(cr_path, tmp_path / "slow.dcm", "slowloris", downscale=8)
    body, content_type = build_related([image.read_bytes()])
    slow = [Slowloris(node.http_port, body, content_type) for _ in range(SLOW_CLIENTS)]
    for client in slow:
        client.start()
    try:
        served = []
        for i in range(6):  # normal clients, while the slow ones hold their connections
            other = radiograph_copy(cr_path, tmp_path / f"ok{i}.dcm", f"served{i}", downscale=8)
            assert stow_one(node, other) == 200
            served.append(str(pydicom.dcmread(other, stop_before_pixels=True).SOPInstanceUID))
        assert httpx.get(f"{node.url}/healthz", timeout=30).status_code == 200
        assert all(still_open(c.sock) for c in slow), "a slow client was cut off too early"
        for client in slow:
            answer = read_until_closed(client.sock, CUT_OFF_DEADLINE_S)
            status_line, _, rest = answer.partition(b"\r\n")
            assert status_line.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b'"error":"request-timeout"' in rest
        pacs.wait_for(len(served), timeout=120)
    finally:
        for client in slow:
            client.stop.set()
            client.sock.close()


def test_a_dicom_peer_stalled_mid_pdu_loses_its_association_and_others_are_served(
        peers: tuple[NodeProcess, Receiver], tmp_path: Path, cr_path: Path) -> None:
    node, _ = peers
    big = radiograph_copy(cr_path, tmp_path / "big.dcm", "stalled", downscale=2)
    # past the association request, into the first P-DATA-TF of the image (64 KiB PDUs)
    proxy = StallingProxy(node.dicom_port, limit=20_000)
    proxy.start()
    stalled = threading.Thread(target=storescu, args=(proxy.port, [big]),
                               kwargs={"extra": ("-to", "600", "-ta", "600", "-td", "600")},
                               daemon=True)
    stalled.start()
    assert proxy.stalled.wait(60), "the stalled peer never got that far"
    for i in range(4):  # others associate, store and are answered meanwhile
        other = radiograph_copy(cr_path, tmp_path / f"dimse{i}.dcm", f"other{i}", downscale=8)
        sent = storescu(node.dicom_port, [other])
        assert sent.returncode == 0, sent.stderr
    assert not proxy.node_closed.is_set(), "the stalled peer was cut off too early"
    wait_until(proxy.node_closed.is_set, CUT_OFF_DEADLINE_S, 0.2,
               "the node to drop the stalled association", node.proc)
    assert node.proc.poll() is None
