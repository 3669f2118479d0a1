"""The DICOM (DIMSE) front: a C-ECHO and C-STORE SCP that hands what it receives to intake.

Handlers are plain functions bound with ``evt_handlers``; they return a DICOM status and never
raise (pynetdicom ``apps/storescp`` style).
"""

from __future__ import annotations

import logging

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
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_io import status
from dicom_io.uids import INPUT_SOP_CLASSES
from node.core.errors import OutOfResourcesError
from node.dimse.scu import no_delay_handler
from node.jobs.intake import Intake, receive
from node.metrics import RECEIVED
from node.settings import Settings

logger = logging.getLogger(__name__)

#: Transfer syntaxes accepted for images: every one the core decodes.
IMAGE_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
]

def handle_echo(event: evt.Event) -> int:
    return status.SUCCESS


def handle_rejected(event: evt.Event, intake: Intake) -> None:
    """An association refused: a Security Alert in the audit trail (IHE ATNA), with the
    reason told from the AE's own rules (pynetdicom's event does not carry it)."""
    assoc = event.assoc
    calling = assoc.requestor.ae_title.strip()
    primitive = assoc.requestor.primitive
    called = primitive.called_ae_title.strip() if primitive is not None else ""
    if assoc.ae.require_calling_aet and calling not in assoc.ae.require_calling_aet:
        reason = f"calling AE title {calling!r} not allowed"
    elif assoc.ae.require_called_aet and called != assoc.ae.ae_title:
        reason = f"called AE title {called!r} not recognised"
    else:
        reason = "association rejected (too many associations, or unsupported request)"
    intake.audit.association_rejected(calling, assoc.requestor.address, reason)


def handle_conn_open(event: evt.Event) -> None:
    """Give the accepted socket the association's network timeout. Upstream limitation:
    pynetdicom sets it on the listening socket only, and Python's ``accept`` returns a
    blocking socket, so a peer that stops in the middle of a PDU (or stops reading) would
    hold its association thread for ever; with the timeout its read (or write) fails after
    ``network_timeout_s`` and the association is closed."""
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        try:
            sock.settimeout(event.assoc.network_timeout)
        except OSError as e:  # closed meanwhile: the association ends on its own
            logger.debug("socket timeout not set: %s", e)


def handle_store(event: evt.Event, intake: Intake) -> int:
    """Parse and gate the object once, store it as received (file meta + encoded data set)
    durably, record and queue its job, then succeed. The gate's verdict is recorded, never
    answered: a declined object is stored and recorded as skipped."""
    try:
        data = event.encoded_dataset(include_meta=True)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        sop_class = str(event.request.AffectedSOPClassUID)
        calling = event.assoc.requestor.ae_title.strip()
        received = receive(data, "dimse", calling)
        received.address = event.assoc.requestor.address
        header = received.dataset
        data_class = str(header.get("SOPClassUID", ""))
        data_uid = str(header.get("SOPInstanceUID", ""))
    except Exception as e:
        logger.warning("C-STORE could not be read: %s", type(e).__name__)
        return status.CANNOT_UNDERSTAND
    # The result must answer the image the sender asked about: the request and the data set
    # must name the same instance (else its results would reference another image).
    if data_class != sop_class:
        logger.warning("C-STORE refused: data set SOP Class is not the request's %s", sop_class)
        return status.DATASET_DOES_NOT_MATCH
    if data_uid != sop_uid:
        logger.warning("C-STORE of %s refused: the data set names another SOP Instance", sop_uid)
        return status.CANNOT_UNDERSTAND
    try:
        intake.accept(received)
    except OutOfResourcesError as e:
        logger.error("C-STORE of %s refused, out of resources: %s", sop_uid, e)
        RECEIVED.labels("dimse", "refused").inc()
        return status.OUT_OF_RESOURCES
    except Exception:
        logger.exception("C-STORE of %s could not be stored", sop_uid)
        RECEIVED.labels("dimse", "refused").inc()
        return status.OUT_OF_RESOURCES
    RECEIVED.labels("dimse", "stored").inc()
    return status.SUCCESS


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
    """The SCP's event handlers: C-ECHO, C-STORE into ``intake``, refused associations to
    its audit trail, and TCP_NODELAY and the network timeout on every accepted connection."""
    return [(evt.EVT_C_ECHO, handle_echo), (evt.EVT_C_STORE, handle_store, [intake]),
            (evt.EVT_REJECTED, handle_rejected, [intake]), no_delay_handler(),
            (evt.EVT_CONN_OPEN, handle_conn_open)]


def start_scp(ae: AE, address: tuple[str, int], handlers: list,
              ssl_context=None) -> ThreadedAssociationServer:
    """``ae.start_server(address, block=False, ...)``: ``ae.shutdown()`` stops it."""
    return ae.start_server(address, block=False, evt_handlers=handlers,
                           ssl_context=ssl_context)
