"""The node's DICOM transport: TCP_NODELAY on its associations, its SCP server's life."""

from __future__ import annotations

import socket

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from node.dimse.scp import handle_echo, start_scp
from node.dimse.scu import associate, no_delay, no_delay_handler


def _nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_no_delay_sets_tcp_nodelay_and_ignores_other_sockets() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        assert not _nodelay(client)  # the kernel's default: Nagle on
        no_delay(client)
        assert _nodelay(client)
    left, right = socket.socketpair()  # AF_UNIX: no TCP options, nothing to do
    with left, right:
        no_delay(left)
    no_delay(None)


def test_plain_pynetdicom_leaves_nagle_on() -> None:
    """Why the handler exists: without it an accepted connection keeps Nagle's algorithm."""
    ae = AE(ae_title="NODE")
    ae.add_supported_context(Verification, ImplicitVRLittleEndian)
    server = start_scp(ae, ("127.0.0.1", 0), [(evt.EVT_C_ECHO, handle_echo)])
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification, ImplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="NODE")
        try:
            [accepted] = server.active_associations
            assert not _nodelay(accepted.dul.socket.socket)
        finally:
            assoc.release()
    finally:
        ae.shutdown()


def test_scp_connections_send_without_nagle_and_stop_with_the_ae() -> None:
    """Each association the node accepts has TCP_NODELAY (its C-STORE responses are not held
    back), it answers like pynetdicom's own server, and ``ae.shutdown()`` closes the port."""
    ae = AE(ae_title="NODE")
    ae.add_supported_context(Verification, ImplicitVRLittleEndian)
    server = start_scp(ae, ("127.0.0.1", 0), [(evt.EVT_C_ECHO, handle_echo),
                                              no_delay_handler()])
    port = server.server_address[1]
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification, ImplicitVRLittleEndian)
        assoc = associate(scu, "127.0.0.1", port, "NODE")  # as the node's sender associates
        assert assoc.is_established and _nodelay(assoc.dul.socket.socket)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            [accepted] = server.active_associations
            assert _nodelay(accepted.dul.socket.socket)
        finally:
            assoc.release()
    finally:
        ae.shutdown()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_jpeg_capture_reaches_a_peer_without_jpeg_as_the_same_instance(
    tmp_path, cr_path, loaded_model
) -> None:
    """A peer that accepts only uncompressed syntaxes gets the capture decompressed (RGB),
    under its own SOP Instance UID: the UIDs stay deterministic whatever the peer takes."""
    import numpy as np
    import pydicom

    import dicom_io
    from dicom_io.results import build_results
    from domain import Finding, HeatMap, Prediction
    from node.bench.harness import ResultReceiver
    from node.dimse.scu import Outgoing, send_files
    from node.settings import Peer

    image = dicom_io.load(cr_path)
    values = np.zeros((image.rows, image.columns), np.float32)
    values[100:200, 300:400] = 1.0
    prediction = Prediction((Finding("Nodule", 0.9, 0.5),))
    results = build_results(image, prediction, loaded_model,
                            HeatMap(values, "Nodule", "gradcam"))
    path = results.write(tmp_path)["sc"]
    sc = results.sc
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    receiver = ResultReceiver("PACS", compressed=False).start()  # no JPEG
    try:
        item = Outgoing(path, str(sc.SOPClassUID), str(sc.file_meta.TransferSyntaxUID))
        assert send_files(Peer("PACS", "127.0.0.1", receiver.port), [item], "CXRNODE") == [
            (path, None)]
        got = receiver.got({str(sc.SOPInstanceUID)})
    finally:
        receiver.stop()
    assert got[str(sc.SOPInstanceUID)].sop_class == str(sc.SOPClassUID)
    assert pydicom.dcmread(path).SOPInstanceUID == sc.SOPInstanceUID  # the file is untouched
