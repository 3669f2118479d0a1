"""The C-STORE SCU: result files to a peer, streamed as stored where the peer allows.

Every association it opens, and every one the SCP accepts, gets ``TCP_NODELAY`` through
pynetdicom's ``EVT_CONN_OPEN`` (:func:`no_delay_handler`). A peer with TLS settings
(``destination_tls``) is reached over TLS, its certificate verified.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt

from dicom_io import status
from node.outbound import DestinationTLS, OutboundError
from node.settings import Peer

logger = logging.getLogger(__name__)


def no_delay(sock: socket.socket | None) -> None:
    """Send small writes at once (``TCP_NODELAY``), as Orthanc does (it builds DCMTK with
    ``DISABLE_NAGLE_ALGORITHM``; DCMTK itself leaves Nagle on unless ``NO_TCPDELAY=1``).

    pynetdicom leaves Nagle's algorithm on. A C-STORE is written as a small command PDU and
    then the data set, and the reply is awaited: Nagle holds the data set's last segment until
    the command's segment is acknowledged, and a peer delays that acknowledgement (Linux: up
    to 40 ms). Measured on loopback: a small C-STORE round trip 50 ms with Nagle, 8 ms
    without; an association with one C-STORE 72 ms against 32 ms.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as e:  # a socket closed meanwhile: the association fails on its own
        logger.debug("TCP_NODELAY not set: %s", e)


def _on_conn_open(event: evt.Event) -> None:
    """``EVT_CONN_OPEN``: the association's transport socket gets :func:`no_delay`."""
    transport = event.assoc.dul.socket
    no_delay(transport.socket if transport is not None else None)


def no_delay_handler() -> tuple:
    """The ``evt_handlers`` entry that sets ``TCP_NODELAY`` on each connection opened."""
    return (evt.EVT_CONN_OPEN, _on_conn_open)


def associate(ae: AE, host: str, port: int, called_ae: str, tls_args: tuple | None = None):
    """``ae.associate(...)`` with :func:`no_delay` on its connection (over TLS with
    ``tls_args``: an ``SSLContext`` and the server's name)."""
    return ae.associate(host, port, ae_title=called_ae, evt_handlers=[no_delay_handler()],
                        tls_args=tls_args)


def stream_files_as_stored() -> None:
    """A C-STORE of a file path then streams the file's data set as stored (no decoding, no
    copy in memory). Adapter for an upstream limitation: pynetdicom offers this only as a
    process-wide option of its ``_config`` module (documented under "Configuration
    Options"), with no per-association or per-call switch; so it is set here, before a send,
    never at import. Only used when the peer accepted the file's transfer syntax (see
    :func:`_store`); ``test_result_files_reach_peers_as_stored_or_converted`` checks both
    ways."""
    _config.STORE_SEND_CHUNKED_DATASET = True


UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


@dataclass(frozen=True)
class Outgoing:
    """A result file to send and what its record says of it (so it is not read first)."""

    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


def _store(assoc, item: Outgoing):
    """C-STORE one result file: its bytes as they are when the peer accepted the file's
    transfer syntax for its class (pynetdicom streams the file, nothing is decoded), else
    decoded (a compressed capture decompressed, colour as RGB) and re-encoded in the
    uncompressed syntax the peer accepted."""
    as_is = any(str(cx.abstract_syntax) == item.sop_class_uid
                and str(cx.transfer_syntax[0]) == item.transfer_syntax_uid
                for cx in assoc.accepted_contexts)
    if as_is:
        return assoc.send_c_store(item.path)
    ds = pydicom.dcmread(item.path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # the same instance, another syntax
    return assoc.send_c_store(ds)


def send_files(
    peer: Peer, items: Sequence[Outgoing], calling_ae: str, timeout: float = 60,
    tls: DestinationTLS | None = None,
) -> list[tuple[Path, str | None]]:
    """C-STORE ``items`` to ``peer`` in one association (over TLS with ``tls``); per file
    ``None`` or the failure.

    Success and warning statuses count as delivered; anything else (a failure status, no
    response, a rejected context, a file that is gone, TLS files that cannot be loaded, a
    failed TLS handshake) is a failure with its reason.
    """
    results: list[tuple[Path, str | None]] = []
    datasets: list[tuple[Path, Outgoing]] = []
    for item in items:
        if item.sop_class_uid and item.path.is_file():
            datasets.append((item.path, item))
        else:
            results.append((item.path, "result file missing"))
    if not datasets:
        return results
    stream_files_as_stored()
    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout
    for sop_class in sorted({item.sop_class_uid for _, item in datasets}):
        # one context each, so a peer that prefers implicit VR does not force a re-encoding;
        # a compressed file's own syntax first, so that it goes as it is where it can
        own = sorted({item.transfer_syntax_uid for _, item in datasets
                      if item.sop_class_uid == sop_class} - UNCOMPRESSED)
        for syntax in (*own, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ae.add_requested_context(sop_class, syntax)
    context, tls_args = None, None
    if tls is not None:
        try:
            context = tls.client_context()
        except OutboundError as e:
            return results + [(p, f"TLS to {peer}: {e}") for p, _ in datasets]
        tls_args = (context, tls.server_name or peer.host)
        ae.connection_timeout = timeout  # the handshake's too
    assoc = associate(ae, peer.host, peer.port, peer.ae_title, tls_args)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        reason = f"association with {peer} {why}"
        if context is not None and context.failure() is not None:
            reason = f"TLS with {peer} failed: {context.failure()}"
        return results + [(p, reason) for p, _ in datasets]
    try:
        for path, item in datasets:
            try:
                response = _store(assoc, item)
            except Exception as e:
                results.append((path, f"C-STORE to {peer} failed: {e}"))
                continue
            code = getattr(response, "Status", None)
            if code is None:
                results.append((path, f"no C-STORE response from {peer}"))
            elif code in status.STORED:
                results.append((path, None))
            else:
                results.append((path, f"C-STORE status 0x{code:04X} from {peer}"))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    done = {p for p, _ in results}
    results += [(p, f"association with {peer} ended early") for p, _ in datasets if p not in done]
    return results
