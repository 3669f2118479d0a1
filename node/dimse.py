"""The DICOM (DIMSE) front: a C-ECHO and C-STORE SCP, and a C-STORE SCU for results.

Handlers are plain functions bound with ``evt_handlers``; they return a DICOM status and never
raise (pynetdicom ``apps/storescp`` style).
"""

from __future__ import annotations

import io
import logging
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_io.uids import INPUT_SOP_CLASSES
from node.intake import Intake, QueueFullError
from node.metrics import RECEIVED
from node.settings import Peer, Settings
from node.spool import SpoolFullError

logger = logging.getLogger(__name__)

# A C-STORE of a file path streams the file's data set as stored (no decoding, no copy of it
# in memory); only used when the peer accepted the file's transfer syntax (see _store).
_config.STORE_SEND_CHUNKED_DATASET = True

#: Transfer syntaxes accepted for images: every one the core decodes.
IMAGE_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_NOT_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


def handle_echo(event: evt.Event) -> int:
    return STATUS_SUCCESS


def handle_store(event: evt.Event, intake: Intake) -> int:
    """Write the object as received (file meta + encoded dataset) durably, then succeed."""
    try:
        data = event.encoded_dataset(include_meta=True)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        sop_class = str(event.request.AffectedSOPClassUID)
        calling = event.assoc.requestor.ae_title.strip()
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                 specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except Exception as e:
        logger.warning("C-STORE could not be read: %s", type(e).__name__)
        return STATUS_CANNOT_UNDERSTAND
    # The result must answer the image the sender asked about: the request and the data set
    # must name the same instance (else its results would reference another image).
    if str(header.get("SOPClassUID", "")) != sop_class:
        logger.warning("C-STORE refused: data set SOP Class is not the request's %s", sop_class)
        return STATUS_DATASET_NOT_SOP_CLASS
    if str(header.get("SOPInstanceUID", "")) != sop_uid:
        logger.warning("C-STORE of %s refused: the data set names another SOP Instance", sop_uid)
        return STATUS_CANNOT_UNDERSTAND
    try:
        intake.accept(data, sop_uid, calling, "dimse")
    except (SpoolFullError, QueueFullError) as e:
        logger.error("C-STORE of %s refused, out of resources: %s", sop_uid, e)
        RECEIVED.labels("dimse", "refused").inc()
        return STATUS_OUT_OF_RESOURCES
    except Exception:
        logger.exception("C-STORE of %s could not be stored", sop_uid)
        RECEIVED.labels("dimse", "refused").inc()
        return STATUS_OUT_OF_RESOURCES
    RECEIVED.labels("dimse", "stored").inc()
    return STATUS_SUCCESS


def make_scp(settings: Settings, intake: Intake) -> AE:
    """An AE ready to ``start_server`` with the node's contexts, limits and timeouts."""
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    if settings.allowed_calling_aes:
        # rejected-permanent, reason "calling AE title not recognised" (PS3.8 9.3.4)
        ae.require_calling_aet = list(settings.allowed_calling_aes)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.network_timeout_s
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for sop_class in sorted(INPUT_SOP_CLASSES):
        ae.add_supported_context(sop_class, IMAGE_TRANSFER_SYNTAXES)
    return ae


def scp_handlers(intake: Intake) -> list:
    return [(evt.EVT_C_ECHO, handle_echo), (evt.EVT_C_STORE, handle_store, [intake])]


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


class NoDelayAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server; each accepted connection gets :func:`no_delay`."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        no_delay(client)
        return client, address


def associate(ae: AE, host: str, port: int, called_ae: str):
    """``ae.associate(...)``, the connection set to :func:`no_delay` once established."""
    assoc = ae.associate(host, port, ae_title=called_ae)
    if assoc.is_established and assoc.dul.socket is not None:
        no_delay(assoc.dul.socket.socket)
    return assoc


def start_scp(ae: AE, address: tuple[str, int], handlers: list,
              ssl_context=None) -> NoDelayAssociationServer:
    """``ae.start_server(address, block=False, ...)`` with :class:`NoDelayAssociationServer`
    (``ae.shutdown()`` stops it as it stops its own)."""
    server = ae.make_server(address, evt_handlers=handlers, ssl_context=ssl_context,
                            server_class=NoDelayAssociationServer)
    threading.Thread(target=server.serve_forever, name=f"{ae.ae_title}-acceptor",
                     daemon=True).start()
    ae._servers.append(server)  # as start_server does: the server removes itself on shutdown
    return server


def read_result_files(paths: Sequence[Path], headers: bool = False
                      ) -> tuple[list[tuple[Path, Dataset]], list[tuple[Path, str | None]]]:
    """Result files to send: (path, dataset) of those readable, (path, reason) of the rest
    (``headers``: the data sets without their pixel data)."""
    datasets: list[tuple[Path, Dataset]] = []
    failures: list[tuple[Path, str | None]] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=headers)
            if headers and not ("SOPClassUID" in ds and "TransferSyntaxUID" in ds.file_meta):
                raise ValueError("no SOP Class UID or Transfer Syntax UID")
            datasets.append((path, ds))
        except Exception as e:
            failures.append((path, f"result file unreadable: {type(e).__name__}"))
    return datasets, failures


def _store(assoc, path: Path, header: Dataset):
    """C-STORE one result file: its bytes as they are when the peer accepted the file's
    transfer syntax for its class (pynetdicom streams the file, nothing is decoded), else
    decoded and re-encoded in the syntax the peer accepted."""
    syntax = str(header.file_meta.TransferSyntaxUID)
    as_is = any(str(cx.abstract_syntax) == str(header.SOPClassUID)
                and str(cx.transfer_syntax[0]) == syntax for cx in assoc.accepted_contexts)
    return assoc.send_c_store(path if as_is else pydicom.dcmread(path))


def send_files(
    peer: Peer, paths: Sequence[Path], calling_ae: str, timeout: float = 60
) -> list[tuple[Path, str | None]]:
    """C-STORE ``paths`` to ``peer`` in one association; per file ``None`` or the failure.

    Success and warning statuses count as delivered; anything else (a failure status, no
    response, a rejected context) is a failure with its reason.
    """
    datasets, results = read_result_files(paths, headers=True)
    if not datasets:
        return results
    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
        # one context each, so a peer that prefers implicit VR does not force a re-encoding
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        ae.add_requested_context(sop_class, ImplicitVRLittleEndian)
    assoc = associate(ae, peer.host, peer.port, peer.ae_title)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        return results + [(p, f"association with {peer} {why}") for p, _ in datasets]
    try:
        for path, ds in datasets:
            try:
                status = _store(assoc, path, ds)
            except Exception as e:
                results.append((path, f"C-STORE to {peer} failed: {e}"))
                continue
            code = getattr(status, "Status", None)
            if code is None:
                results.append((path, f"no C-STORE response from {peer}"))
            elif code == 0x0000 or code in (0xB000, 0xB006, 0xB007):
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
