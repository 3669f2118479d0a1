"""The node's own cost per image, step by step, in this process (issue #17, target 1).

The end-to-end phases give the node's CPU per image as a whole; the pipeline overhead is that
minus the model-only cost. This phase shows where the overhead goes, each step alone on the
uncompressed NEMA CR (the overhead target's image), in CPU milliseconds per image
(``time.process_time``, every thread of this process):

* ``receive``: pynetdicom's C-STORE SCP taking the image (PDU reassembly, dataset), with a
  handler that only keeps the bytes; the sender is dcmtk's ``storescu`` in another process
  where installed (so its CPU is not counted), else pynetdicom in a thread (counted: the
  figure then says ``receive_includes_sender``);
* ``store``: the durable write to a spool folder (temp file, fsync, rename, fsync);
* ``parse`` and ``decode``: Part 10 bytes to a data set, then to model-ready pixels;
* ``preprocess``: the model's preprocessing of one image (crop, resize, scale);
* ``results_sr``: the SR alone (``--explain none``); ``results_default``: SR and capture of
  the default result set, the Grad-CAM maps given (their cost is the model-only Grad-CAM
  figure), built as data sets (not yet written as files);
* ``view``: what the worker keeps of a done job for the web page (``/ui``): findings, and a
  thumbnail with the heat maps' overlays where the source may be shown (its Burned In
  Annotation is ``NO``, by default);
* ``send``: pynetdicom's C-STORE of the SR to a receiver in this process (both sides counted).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from node.bench.common import Results, progress
from node.bench.harness import ResultReceiver, free_port, wait_until

#: Images per timed step (the receive step sends this many too).
COUNT = 16
#: The steps, in the order an image meets them; each is ``overhead_<step>_ms`` in the JSON.
STEPS = ("receive", "store", "parse", "decode", "preprocess", "results_sr",
         "results_default", "view", "send_sr")
OVERHEAD_RAW_KEYS = tuple(f"overhead_{step}_ms" for step in STEPS)


def cpu_ms(fn: Callable[[], object], count: int = COUNT) -> float:
    """CPU milliseconds of this process per call of ``fn``, after one call to warm up."""
    fn()
    start = time.process_time()
    for _ in range(count):
        fn()
    return (time.process_time() - start) / count * 1000


def measure_overhead(model, data: bytes, res: Results) -> None:
    """Each step's CPU per image on ``data`` (a Part 10 radiograph) into ``res``."""
    from dicom_io import decode, read_dataset
    from inference.preprocess import pre_process_batch
    from node.core.pipeline import Pipeline
    from node.jobs.storage import INCOMING, SpoolStore

    folder = Path(tempfile.mkdtemp(prefix="cxr-bench-overhead-"))
    try:
        progress("overhead: each step alone, CPU per image")
        res.put("overhead_receive_ms", _receive_ms(data))
        store = SpoolStore(folder / "spool")
        res.put("overhead_store_ms", cpu_ms(lambda: store.put(INCOMING, data)))
        res.put("overhead_parse_ms", cpu_ms(lambda: read_dataset(data)))
        parsed = read_dataset(data)
        res.put("overhead_decode_ms", cpu_ms(lambda: decode(read_dataset(data), name="b"))
                - res.raw["overhead_parse_ms"])
        image = decode(parsed, name="bench")
        prep = model.card.preprocessing
        res.put("overhead_preprocess_ms",
                cpu_ms(lambda: pre_process_batch([(image.pixels, image.maxval)], prep)))
        sr_only = Pipeline(model, "none")
        [scored] = sr_only.score([image])
        res.put("overhead_results_sr_ms", cpu_ms(lambda: sr_only.complete(scored, "none")))
        default = Pipeline(model, "gradcam")
        outcome = default.complete(scored)
        heatmaps, regions = outcome.heatmaps, outcome.regions
        res.put("overhead_results_default_ms", cpu_ms(
            lambda: default.builder.build(scored.image, scored.prediction, heatmaps,
                                          regions=regions)))
        from node.jobs.views import make_view
        from node.settings import Settings

        settings = Settings(model=str(model.source))  # the thumbnail as the node decides
        res.put("overhead_view_ms", cpu_ms(lambda: make_view(outcome, settings)))
        res.put("overhead_send_sr_ms", _send_ms(outcome.results.part10("sr")))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _receive_ms(data: bytes) -> float:
    """pynetdicom's SCP receiving ``COUNT`` copies of ``data``, CPU per image."""
    import pydicom
    from pynetdicom import AE, evt

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    got: list[int] = []

    def on_store(event: evt.Event) -> int:
        got.append(len(event.encoded_dataset()))
        return 0x0000

    ae = AE(ae_title="BENCHRX")
    ae.maximum_pdu_size = 0
    ae.add_supported_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    folder = Path(tempfile.mkdtemp(prefix="cxr-bench-receive-"))
    try:
        path = folder / "image.dcm"
        path.write_bytes(data)
        storescu = shutil.which("storescu")
        start = time.process_time()
        if storescu:
            subprocess.run([storescu, "-aec", "BENCHRX", "-xe", "--repeat", str(COUNT),
                            "127.0.0.1", str(port), str(path)], check=True,
                           capture_output=True, timeout=300)
        else:
            _pynetdicom_send(port, "BENCHRX", ds.SOPClassUID, data, COUNT)
        wait_until(lambda: len(got) >= COUNT, 120, 0.01, "the images to be received")
        return (time.process_time() - start) / COUNT * 1000
    finally:
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def _pynetdicom_send(port: int, called: str, sop_class: str, data: bytes, count: int) -> None:
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(sop_class, str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        for _ in range(count):
            assoc.send_c_store(ds)
    finally:
        assoc.release()


def _send_ms(sr: bytes) -> float:
    """pynetdicom's SCU sending the SR to a receiver in this process, CPU per object."""
    import pydicom
    from pynetdicom import AE

    receiver = ResultReceiver("BENCHPACS").start()
    ds = pydicom.dcmread(io.BytesIO(sr))
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title=receiver.ae_title)
    lock = threading.Lock()
    try:
        def one() -> None:
            with lock:
                status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"the SR was refused: {status}")
        return cpu_ms(one)
    finally:
        assoc.release()
        receiver.stop()
