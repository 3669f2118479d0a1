"""A real viewer: the node's results as a radiologist's viewer shows them.

A modality sends a radiograph whose answer is known (a chest phantom with a bright disc pasted
at a known place, ``tests/phantom.py``) to the PACS (Orthanc with DICOMweb) and to the node;
the node, running a small network trained here to find discs, sends its SR, heat-map capture
and parametric map to the same PACS. OHIF Viewer (npm's ``@ohif/app``, the release pinned in
``system/ohif.py``), served on the PACS's origin, opens the study in headless Chromium (the
system's ``chromium``, driven by Playwright). Through OHIF's own state (``window.services``,
the ``window.cornerstone`` globals) and what it paints, the tests check that:

* the radiograph renders, grey, with the disc bright where it was pasted;
* the heat-map capture renders, its colour on the disc and not on the other lung;
* once the SR series is opened, the SR display set's ``measurements`` hold one entry per
  region-bearing finding (TID 1410 planar ROI), labelled with the finding, its outline on the
  radiograph around the disc and referencing the radiograph's SOP Instance UID; OHIF draws
  that outline (its viewport's pixels change along it). OHIF's ``measurementService`` stays
  empty for an SR it did not write (not "rehydratable"), so nothing is asked of it.

Screenshots (``radiograph.png``, ``heatmap_capture.png``, ``sr.png``) are kept in the module's
temporary folder ``viewer-screenshots*`` (its path is among the figures printed at the end of
the run). Skipped only when npm (for OHIF) or Chromium cannot be had.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
import pytest
import torch
from conftest import record_figure, require_tool
from phantom import DISC_LABELS, Disc, add_disc, chest_phantom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from system.ohif import OHIF_VERSION, OhifUnavailableError, ViewerServer, ohif_dist
from system.peers import NodeProcess, Orthanc, free_port, running, storescu, wait_until

T = TypeVar("T")

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
              "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34")
CHROMIUM_ARGS = ("--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                 "--ignore-gpu-blocklist", "--disable-dev-shm-usage")
#: The radiograph (rows, columns) and the disc on it: in the right lung field, inside the
#: model's centre crop, radius about 8 model pixels. Array indices: pixel centres are integers.
SHAPE = (600, 500)
DISC = Disc(row=250.0, column=150.0, radius=18.0)
DISC_CONTRAST = 0.6
FINDING = DISC_LABELS[0]  # "Disc": the one positive finding; "No Disc" is negative
#: Deadlines (s): OHIF's first paint takes 12-20 s with software rendering on 2 cores.
LOAD_S, RENDER_S = 120.0, 60.0
#: Clicked away whenever seen: OHIF's onboarding tour (should it show although marked as
#: shown), its measurement-tracking prompts.
DISMISS = ("Skip all", "No, do not ask again for this series", "No, do not ask again")

# Before OHIF starts: its onboarding tour of /viewer counts as shown (it would cover the page).
JS_TOUR_SHOWN = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"

# In the page: OHIF's display sets, and what the active viewport holds and paints.
JS_DISPLAY_SETS = """() => window.services ? window.services.displaySetService
  .getActiveDisplaySets().map(d => ({uid: d.displaySetInstanceUID, modality: d.Modality,
    sopClass: d.SOPClassUID, sops: (d.instances || []).map(i => i.SOPInstanceUID),
    description: d.SeriesDescription})) : []"""
JS_VIEWPORT = """() => {
  const grid = window.services.viewportGridService;
  const id = grid.getActiveViewportId();
  const held = grid.getState().viewports.get(id);
  const enabled = window.cornerstone.getEnabledElementByViewportId(id);
  const vp = enabled && enabled.viewport;
  const out = {id, displaySets: held ? held.displaySetInstanceUIDs : [], imageId: null};
  if (!vp || !vp.canvas) return out;
  out.imageId = vp.getCurrentImageId ? vp.getCurrentImageId() || null : null;
  const c = vp.canvas, d = c.getContext('2d', {willReadFrequently: true})
    .getImageData(0, 0, c.width, c.height).data;
  let n = 0, sum = 0, sum2 = 0;
  for (let i = 0; i < d.length; i += 4 * 11) {
    const l = (d[i] + d[i + 1] + d[i + 2]) / 3; n++; sum += l; sum2 += l * l; }
  out.sd = n ? Math.sqrt(Math.max(sum2 / n - (sum / n) ** 2, 0)) : 0;
  return out;
}"""
JS_OPEN = """([id, uid]) => window.services.viewportGridService.setDisplaySetsForViewport(
  {viewportId: id, displaySetInstanceUIDs: [uid]})"""
JS_TO_SCREEN = """(points) => {
  const cs = window.cornerstone;
  const id = window.services.viewportGridService.getActiveViewportId();
  const vp = cs.getEnabledElementByViewportId(id).viewport;
  const imageId = vp.getCurrentImageId(), r = vp.canvas.getBoundingClientRect();
  return {rect: {x: r.x, y: r.y, width: r.width, height: r.height},
          points: points.map(p => vp.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, p)))};
}"""
JS_SR = """(uid) => {
  const ds = window.services.displaySetService.getDisplaySetByUID(uid);
  if (!ds) return null;
  const sop = seq => { const item = Array.isArray(seq) ? seq[0] : seq;
                       return item ? item.ReferencedSOPInstanceUID || null : null; };
  return {isLoaded: !!ds.isLoaded, isRehydratable: !!ds.isRehydratable,
    measurements: ds.measurements === null || ds.measurements === undefined ? null
      : ds.measurements.map(m => ({
          labels: (m.labels || []).map(l => ({label: String(l.label), value: String(l.value)})),
          trackingIdentifier: m.TrackingIdentifier || null, loaded: !!m.loaded,
          referencedSOPInstanceUID: m.ReferencedSOPInstanceUID || null,
          displaySetInstanceUID: m.displaySetInstanceUID || null,
          coords: (m.coords || []).map(c => ({valueType: c.ValueType,
            graphicType: c.GraphicType, graphicData: Array.from(c.GraphicData || []),
            referencedSOPInstanceUID: sop(c.ReferencedSOPSequence)}))}))};
}"""


# -- the known answer: a radiograph with a disc, and a network trained to find discs --------


def radiograph(path: Path) -> Path:
    """A CR chest radiograph (MONOCHROME2, 12 bits) with :data:`DISC` pasted on it."""
    display = chest_phantom(*SHAPE, np.random.default_rng(7))
    display = add_disc(display, (DISC.row, DISC.column), DISC.radius, DISC_CONTRAST)
    stored = np.rint(np.clip(display, 0, 1) * 4095).astype("<u2")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Phantom^Disc", "CXR-VIEWER"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "VIEWER", "1", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SeriesDescription = "Chest PA (phantom with a disc)"
    ds.Manufacturer = "cxr-node tests"
    ds.Rows, ds.Columns = SHAPE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def disc_model_file(folder: Path) -> Path:
    """The disc detector (:data:`DISC_LABELS`; ``tests/test_explain_faithful.py`` trains the
    same) saved whole with ``torch.save``, its model card beside it, for the node to load."""
    import torchxrayvision as xrv
    from phantom import train_disc_detector

    torch.manual_seed(0)
    net = xrv.models.DenseNet(num_classes=2, in_channels=1, weights=None, block_config=(2, 2),
                              growth_rate=8, num_init_features=16)
    train_disc_detector(net, steps=500, crop=64, batch_size=16, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "disc-detector.pt"
    torch.save(net, path)
    card = {"name": "disc detector", "version": "viewer-test", "labels": list(DISC_LABELS),
            "thresholds": [0.5, 0.5], "output": "logits"}
    path.with_name(path.name + ".card.json").write_text(json.dumps(card))
    return path


def region_groups(sr: Dataset) -> list[str]:
    """Tracking identifiers of the SR's measurement groups (125007) that hold an image region
    (a SCOORD): what OHIF should list as measurements with coordinates."""
    out: list[str] = []

    def walk(items) -> None:
        for item in items or []:
            code = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in \
                item else None
            children = item.get("ContentSequence", [])
            if code == "125007":
                if any(child.ValueType == "SCOORD" for child in children):
                    ids = [str(child.TextValue) for child in children
                           if child.get("ValueType") == "TEXT"
                           and child.ConceptNameCodeSequence[0].CodeValue == "112039"]
                    out.append(ids[0] if ids else "?")
            else:
                walk(children)

    walk(sr.get("ContentSequence", []))
    return out


# -- the study in Orthanc -------------------------------------------------------------------


@dataclass
class Study:
    """The radiograph (its UIDs, the disc on it) and the node's results, as Orthanc has them."""

    study_uid: str
    radiograph_uid: str
    sr_uid: str
    sc_uid: str
    sr: Dataset
    disc: Disc = DISC


def _first(instance: dict, tag: str) -> str:
    return str(instance.get(tag, {}).get("Value", [""])[0])


@pytest.fixture(scope="module")
def tools() -> tuple[str, Path]:
    """Chromium and OHIF's ``dist`` (skips, saying why, when either cannot be had)."""
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed "
                        "(pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    try:
        return chromium, ohif_dist()
    except OhifUnavailableError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tools) -> Iterator[tuple[Orthanc, Study]]:
    """Orthanc (still running) holding the radiograph and the node's results for it."""
    for tool in ("storescu", "Orthanc"):
        require_tool(tool)
    folder = tmp_path_factory.mktemp("viewer-study")
    source = radiograph(folder / "radiograph.dcm")
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    started = time.perf_counter()
    model = disc_model_file(folder / "model")
    record_figure(f"viewer: disc detector trained in {time.perf_counter() - started:.0f} s")
    orthanc = Orthanc(folder / "orthanc")
    orthanc.dicom_port = free_port()
    node = NodeProcess(folder / "spool", model,
                       [f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"])
    node.dicom_port = free_port()
    with running(orthanc, node):
        orthanc.start({"cxrnode": [node.ae_title, "127.0.0.1", node.dicom_port]})
        node.start()
        for port, called in ((orthanc.dicom_port, orthanc.ae_title),
                             (node.dicom_port, node.ae_title)):
            proc = storescu(port, [source], called=called)
            assert proc.returncode == 0, proc.stderr

        def results() -> dict[str, str] | None:
            try:
                answer = orthanc.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/instances")
            except urllib.error.HTTPError:  # no such study yet
                return None
            held = {_first(i, "00080016"): _first(i, "00080018") for i in answer}
            sr = next((held[c] for c in SR_CLASSES if c in held), None)
            return {"sr": sr, "sc": held[SC_CLASS]} if sr and SC_CLASS in held else None

        try:
            got = wait_until(results, 120, 0.5, "the node's SR and capture in Orthanc",
                             node.proc)
        except (TimeoutError, RuntimeError) as e:
            pytest.fail(f"{e}; the node's log ends:\n{node.log_tail()}")
        node.stop()
        found = orthanc.post("/tools/find", {"Level": "Instance",
                                             "Query": {"SOPInstanceUID": got["sr"]}})
        with urllib.request.urlopen(f"{orthanc.url}/instances/{found[0]}/file",
                                    timeout=30) as r:
            sr = pydicom.dcmread(io.BytesIO(r.read()))
        yield orthanc, Study(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), got["sr"],
                             got["sc"], sr)


# -- OHIF in Chromium -------------------------------------------------------------------------


@dataclass
class Viewer:
    """OHIF showing :class:`Study` in a Playwright page; screenshots go to ``shots``."""

    page: Any
    shots: Path
    logs: list[str] = field(default_factory=list)
    #: Uncaught errors in the page, and failures OHIF's error boundaries caught (it then shows
    #: "Something went wrong" instead of the viewer).
    errors: list[str] = field(default_factory=list)

    def console(self, message: Any) -> None:
        text = f"{message.type}: {message.text}"[:1000]
        self.logs.append(text)
        if "Error Boundary" in message.text:
            self.errors.append(text)

    def page_error(self, error: Any) -> None:
        self.logs.append(f"page error: {error}"[:1000])
        self.errors.append(f"page error: {error}"[:1000])

    def poll(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        """``condition()`` once it is true (OHIF's prompts dismissed between tries); on the
        deadline an ``AssertionError`` with what was awaited and the page's last messages."""

        def attempt() -> T:
            self.dismiss()
            return condition()

        try:
            return wait_until(attempt, timeout, 0.25, what)
        except TimeoutError as e:
            raise AssertionError(f"{e}; OHIF's console ends:\n" + "\n".join(self.logs[-25:])
                                 ) from None

    def dismiss(self) -> None:
        for text in DISMISS:
            button = self.page.get_by_text(text, exact=True)
            if button.count() and button.first.is_visible():
                button.first.click(timeout=5000)

    def display_sets(self) -> list[dict]:
        return self.page.evaluate(JS_DISPLAY_SETS)

    def display_set_of(self, sop_uid: str) -> dict:
        return self.poll(lambda: next((d for d in self.display_sets() if sop_uid in d["sops"]),
                                      None), LOAD_S, f"OHIF's display set of {sop_uid}")

    def open(self, display_set: dict) -> dict:
        """Put ``display_set`` in the active viewport; its state once OHIF holds it."""
        viewport = self.page.evaluate(JS_VIEWPORT)
        self.page.evaluate(JS_OPEN, [viewport["id"], display_set["uid"]])
        return self.poll(lambda: (v := self.page.evaluate(JS_VIEWPORT))["displaySets"] == [
            display_set["uid"]] and v, RENDER_S, f"the viewport to hold {display_set['uid']}")

    def rendered(self, sop_uid: str) -> dict:
        """The active viewport once it shows ``sop_uid`` painted (not a blank canvas)."""
        return self.poll(lambda: (v := self.page.evaluate(JS_VIEWPORT))["imageId"] and
                         f"/instances/{sop_uid}/" in v["imageId"] and v.get("sd", 0) > 5 and v,
                         RENDER_S, f"the viewport to paint {sop_uid}")

    def to_screen(self, points: list[list[float]]) -> tuple[dict, np.ndarray]:
        """The viewport canvas's rectangle and ``points`` (image x, y) in its pixels."""
        got = self.page.evaluate(JS_TO_SCREEN, points)
        return got["rect"], np.array([[p[0], p[1]] for p in got["points"]], np.float64)

    def screenshot(self, name: str) -> np.ndarray:
        """The active viewport's canvas as RGB ``(h, w, 3)`` uint8, kept as ``name``.png."""
        from PIL import Image

        rect, _ = self.to_screen([])
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), clip=rect, animations="disabled")
        return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def viewer(tools, study, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    """OHIF (its study page loaded, display sets known) in headless Chromium."""
    from playwright.sync_api import sync_playwright

    chromium, dist = tools
    orthanc, s = study
    shots = tmp_path_factory.mktemp("viewer-screenshots")
    record_figure(f"viewer: OHIF {OHIF_VERSION} screenshots in {shots}")
    with ViewerServer(dist, orthanc.http_port) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          service_workers="block")
            context.add_init_script(JS_TOUR_SHOWN)
            page = context.new_page()
            v = Viewer(page, shots)
            page.on("console", v.console)
            page.on("pageerror", v.page_error)
            started = time.perf_counter()
            page.goto(f"{server.url}/viewer?StudyInstanceUIDs={s.study_uid}",
                      wait_until="domcontentloaded", timeout=LOAD_S * 1000)
            v.poll(lambda: page.evaluate("() => self.crossOriginIsolated && !!window.services"
                                         " && !!window.cornerstone"), LOAD_S,
                   "OHIF to start (cross-origin isolated)")
            for uid in (s.radiograph_uid, s.sc_uid, s.sr_uid):
                v.display_set_of(uid)
            v.rendered(s.radiograph_uid)  # the hanging protocol's first image
            record_figure(f"viewer: OHIF painted the radiograph {time.perf_counter() - started:.0f}"
                          " s after the page was asked for")
            yield v
        finally:
            browser.close()


@pytest.fixture(scope="module")
def bare_radiograph(viewer: Viewer, study) -> np.ndarray:
    """The radiograph alone in the viewport, as painted (RGB)."""
    _, s = study
    viewer.open(viewer.display_set_of(s.radiograph_uid))
    viewer.rendered(s.radiograph_uid)
    return viewer.screenshot("radiograph")


def _patch(image: np.ndarray, at, half: int) -> np.ndarray:
    """Pixels of ``image`` (h, w[, 3]) within ``half`` of ``at`` (x, y), as float (n[, 3])."""
    x, y = (round(float(v)) for v in at)
    window = image[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1]
    return window.reshape(-1, *image.shape[2:]).astype(np.float64)


def _redness(pixels: np.ndarray) -> np.ndarray:
    return pixels[:, 0] - pixels[:, 2]


# -- the tests --------------------------------------------------------------------------------


def test_radiograph_and_heat_map_capture_render(viewer: Viewer, study, bare_radiograph) -> None:
    _, s = study
    assert viewer.display_set_of(s.radiograph_uid)["modality"] == "CR"

    # The radiograph: grey, the disc bright against the lung beside it.
    _, (centre, lung, top_left, bottom_right) = viewer.to_screen(
        [[s.disc.column, s.disc.row], [s.disc.column + 2.5 * s.disc.radius, s.disc.row],
         [0, 0], [SHAPE[1] - 1, SHAPE[0] - 1]])
    (x0, y0), (x1, y1) = np.round(top_left).astype(int), np.round(bottom_right).astype(int)
    image = bare_radiograph[max(y0, 0):y1, max(x0, 0):x1].reshape(-1, 3).astype(np.float64)
    coloured = float(np.mean(np.abs(_redness(image)) > 8))
    assert coloured < 0.005, f"{coloured:.1%} of the painted radiograph is in colour"
    assert _patch(bare_radiograph, centre, 3).mean() > _patch(bare_radiograph, lung, 3).mean() \
        + 30, "the disc is not brighter than the lung beside it on the painted radiograph"

    # The capture: its colour on the disc (the known answer), none on the other lung.
    capture_set = viewer.display_set_of(s.sc_uid)
    assert capture_set["sopClass"] == SC_CLASS
    viewer.open(capture_set)
    viewer.rendered(s.sc_uid)
    capture = viewer.screenshot("heatmap_capture")
    _, (centre, step, other_lung) = viewer.to_screen(
        [[s.disc.column, s.disc.row], [s.disc.column + 1, s.disc.row],
         [SHAPE[1] - 1 - s.disc.column, s.disc.row]])
    half = max(2, round(0.5 * s.disc.radius * float(np.linalg.norm(step - centre))))
    on_disc = _redness(_patch(capture, centre, half)).max()
    elsewhere = np.abs(_redness(_patch(capture, other_lung, half))).max()
    assert on_disc > 40, f"no heat-map colour on the disc (red - blue at most {on_disc:.0f})"
    assert elsewhere < 20, f"heat-map colour on the other lung (|red - blue| {elsewhere:.0f})"
    assert not viewer.errors, "\n".join(viewer.errors)


def _inside(polygon: np.ndarray, x: float, y: float) -> bool:
    """Even-odd rule: whether (x, y) lies inside the closed ``polygon`` (n, 2) of (x, y)."""
    x0, y0, x1, y1 = polygon[:-1, 0], polygon[:-1, 1], polygon[1:, 0], polygon[1:, 1]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(crosses & (x < at)) % 2)


def test_sr_measurements_outline_the_finding(viewer: Viewer, study, bare_radiograph) -> None:
    """OHIF lists the SR's region-bearing findings as measurements on the radiograph, around
    the disc, and draws them."""
    _, s = study
    expected = region_groups(s.sr)
    sr_set = viewer.display_set_of(s.sr_uid)
    viewer.open(sr_set)

    def loaded() -> dict | None:
        """The SR display set once OHIF has read it and placed every measurement that has
        coordinates on its image (or failed trying)."""
        st = viewer.page.evaluate(JS_SR, sr_set["uid"])
        if not st or not st["isLoaded"] or st["measurements"] is None:
            return None
        placed = all(m["loaded"] for m in st["measurements"] if m["coords"])
        return st if placed or viewer.errors else None

    try:
        state = viewer.poll(loaded, RENDER_S, "OHIF to load the SR and place its measurements")
    except AssertionError:  # say what it holds
        state = viewer.page.evaluate(JS_SR, sr_set["uid"])
        if not state or state["measurements"] is None:
            raise
    assert not viewer.errors, (
        "OHIF failed on the SR (OHIF 3.13.2 reads coords[0] of every measurement group under "
        "Imaging Measurements: a group without an image region breaks it):\n"
        + "\n".join(viewer.errors) + f"\nits measurements: {json.dumps(state['measurements'])}")
    with_region = [m for m in state["measurements"] if m["coords"]]
    assert expected, (
        "the node's SR has no measurement group with an image region (TID 1410); OHIF shows "
        f"{len(state['measurements'])} measurement(s), none with coordinates: "
        f"{[m['trackingIdentifier'] for m in state['measurements']]}")
    assert len(with_region) == len(expected) == 1, (expected, with_region)  # "Disc" only
    assert [m["trackingIdentifier"] for m in with_region] == expected, (expected, with_region)
    m = with_region[0]
    text = " ".join(label["label"] for label in m["labels"])
    assert re.search(rf"(?<!No )\b{FINDING}\b", text), f"{FINDING!r} not in the labels {text!r}"

    (coord,) = m["coords"]
    assert coord["valueType"] == "SCOORD" and coord["graphicType"] == "POLYLINE", coord
    assert coord["referencedSOPInstanceUID"] == s.radiograph_uid, coord
    points = np.array(coord["graphicData"], np.float64).reshape(-1, 2)  # (column, row)
    assert len(points) >= 4 and np.array_equal(points[0], points[-1]), "outline not closed"
    rows, columns = SHAPE
    assert ((points >= 0) & (points <= [columns, rows])).all(), "outline off the radiograph"
    # SCOORD puts pixel centres at +0.5: the disc's centre pixel is at (column + .5, row + .5)
    assert _inside(points, s.disc.column + 0.5, s.disc.row + 0.5), \
        f"the outline {points.min(0)}..{points.max(0)} does not contain the disc {s.disc}"
    span = points.max(0) - points.min(0)
    assert (span < [columns / 2, rows / 2]).all(), f"outline of {span} is not a region"
    # OHIF matched it to the radiograph it shows
    radiograph_set = viewer.display_set_of(s.radiograph_uid)
    assert m["loaded"] and m["referencedSOPInstanceUID"] == s.radiograph_uid, (
        f"OHIF did not put the measurement on the radiograph: {json.dumps(m)}; all of them: "
        f"{json.dumps(state['measurements'])}; its console ends:\n" + "\n".join(viewer.logs[-8:]))
    assert m["displaySetInstanceUID"] == radiograph_set["uid"], json.dumps(m)

    # What OHIF paints: the radiograph, with the outline drawn along the SR's points.
    viewer.rendered(s.radiograph_uid)

    other_lung = [SHAPE[1] - 1 - s.disc.column, s.disc.row]

    def outline_drawn() -> tuple[np.ndarray, float] | None:
        """The SR viewport's pixels once they differ from the bare radiograph's along the
        outline (within 3 pixels of at least half its points) and only there."""
        shot = viewer.screenshot("sr")
        if shot.shape != bare_radiograph.shape:
            return None
        diff = np.abs(shot.astype(np.int16) - bare_radiograph).sum(2)
        _, screen = viewer.to_screen([*points[:-1].tolist(), other_lung])
        share = float(np.mean([_patch(diff, at, 3).max(initial=0) > 60 for at in screen[:-1]]))
        # the same framing as the bare radiograph: unchanged on the other lung
        same = _patch(diff, screen[-1], 10).max(initial=0) <= 30
        return (shot, share) if share >= 0.5 and same else None

    shot, share = viewer.poll(outline_drawn, RENDER_S, "OHIF to draw the SR's outline")
    assert (shot != bare_radiograph).any()
    record_figure(f"viewer: SR outline drawn at {share:.0%} of its points "
                  f"({viewer.shots / 'sr.png'})")
