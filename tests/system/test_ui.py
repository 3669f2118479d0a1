"""The operators' page in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright) against a node process that has processed real radiographs.

The node (a token set) gets four copies of the NEMA CR: two from ``MODALITY`` and one from
``WARD`` are scored, one lateral view is declined by the gate. Every result goes to a dcmtk
``storescp`` PACS; ``WARD``'s results also go back to ``WARD`` (a peer), which is down, so
its deliveries fail (one attempt allowed). In the browser: the page asks for the token; the
overview shows the right counts; the WARD job's page shows the radiograph with its heat-map
overlay and the findings; once WARD is up, Resend makes its deliveries delivered; no page
shows the patient's name; the console shows no error. Screenshots go to
``$CXR_NODE_ARTIFACTS/ui`` (default ``tests/artifacts/ui``, ignored by git).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import record_figure

from system.conftest import radiograph_copy
from system.peers import NodeProcess, Receiver, free_port, storescu, wait_until

TOKEN = "ui-test-token"
PATIENT = "Doe^Jane"
CHROMIUM_ARGS = ("--disable-dev-shm-usage",)
ARTIFACTS = Path(os.environ.get("CXR_NODE_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts")) / "ui"


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed "
                        "(pip install -e '.[test]')")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    return path


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory, whole_model_path: Path, cr_path: Path,
              dcmtk) -> Iterator[tuple[NodeProcess, Receiver]]:
    """The node once it has closed every job and given up on WARD; WARD not started."""
    folder = tmp_path_factory.mktemp("ui")
    pacs = Receiver("PACS", free_port(), folder / "pacs").start()
    ward = Receiver("WARD", free_port(), folder / "ward")
    node = NodeProcess(folder / "spool", whole_model_path, [pacs.address],
                       extra=("--retry-max-attempts", "1"),
                       env={"CXR_NODE_HTTP_TOKEN": TOKEN,
                            "CXR_NODE_PEERS": f'{{"WARD": "127.0.0.1:{ward.port}"}}'})
    files = {name: radiograph_copy(cr_path, folder / "in" / f"{name}.dcm", name, downscale=4,
                                   PatientName=PATIENT, BurnedInAnnotation="NO", **changes)
             for name, changes in [("a", {}), ("b", {}), ("ward", {}),
                                   ("lateral", {"ViewPosition": "LL"})]}
    try:
        node.start()
        for name, path in files.items():
            result = storescu(node.dicom_port, [path], calling="WARD" if name == "ward"
                              else "MODALITY")
            assert result.returncode == 0, result.stderr

        def settled() -> dict[str, int] | None:
            counts = node.counts()
            done = counts.get("jobs_done", 0) + counts.get("jobs_skipped", 0) == 4
            return counts if done and not counts.get("deliveries_pending") else None

        counts = wait_until(settled, 120, 0.25, "every job closed, every delivery settled")
        assert counts["jobs_done"] == 3 and counts["jobs_skipped"] == 1, counts
        assert counts["deliveries_failed"] >= 1, counts
        yield node, ward
    finally:
        node.stop()
        ward.stop()
        pacs.stop()


def test_the_page_in_a_browser(chromium: str, processed: tuple[NodeProcess, Receiver]
                               ) -> None:
    from playwright.sync_api import sync_playwright

    node, ward = processed
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    record_figure(f"ui: screenshots in {ARTIFACTS}")
    errors: list[str] = []
    texts: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: d.accept())  # the confirmation of Resend

            def shot(name: str) -> None:
                texts.append(page.content())
                page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)

            # a token is set: the page asks for it, and refuses a wrong one
            page.goto(f"{node.url}/ui")
            assert "/ui/login" in page.url and page.locator("#secret").is_visible()
            page.fill("#name", "Ada Admin")
            page.fill("#secret", "wrong")
            page.click("button[type=submit]")
            assert "wrong secret" in page.text_content("#problem")
            # the refusal is a 401, which Chromium reports; any other error counts below
            assert [e for e in errors if "401" not in e] == []
            errors.clear()
            shot("login")
            page.fill("#name", "Ada Admin")
            page.fill("#secret", TOKEN)
            page.click("button[type=submit]")

            # the overview's counts
            page.wait_for_selector("#states")
            counts = {cell.get_attribute("data-state"): int(cell.text_content())
                      for cell in page.locator("#states td.num").all()}
            assert counts == {"queued": 0, "processing": 0, "done": 3, "skipped": 1,
                              "failed": 0}
            assert page.text_content("#ready") == "ready"
            assert re.search(r"WARD@127\.0\.0\.1:\d+", page.text_content("#destinations"))
            shot("overview")

            # the jobs list, filtered by calling AE, leads to the WARD job
            page.goto(f"{node.url}/ui/jobs?calling_ae=WARD")
            [link] = page.locator("#jobs a").all()
            shot("jobs")
            link.click()
            page.wait_for_selector("#findings")
            for image in ("#thumb", "img.overlay >> nth=0"):
                assert page.locator(image).evaluate("i => i.complete && i.naturalWidth > 0")
            assert page.locator("img.overlay >> nth=0").is_visible()
            rows = page.locator("#findings tr").count() - 1
            assert rows > 1 and page.locator("#results dd").count() >= 2
            failed = page.locator("tr.delivery-failed").count()
            assert failed >= 1 and page.locator("button.resend").count() == failed
            shot("job")

            # an overview left open in another tab follows (it polls)
            overview = page.context.new_page()
            overview.on("console", lambda m: errors.append(m.text) if m.type == "error"
                        else None)
            overview.goto(f"{node.url}/ui")
            assert "WARD@" in overview.text_content("#destinations")

            # WARD comes up; Resend sends what had failed
            ward.start()
            for _ in range(failed):
                with page.expect_navigation():
                    page.locator("button.resend").first.click()
                assert "queued to be sent again" in page.text_content("#notice")
            job_url = page.url.split("?")[0]

            def all_sent() -> bool:
                page.goto(job_url)
                states = [c.text_content() for c in page.locator("td.dstate").all()]
                return bool(states) and set(states) == {"sent"}

            wait_until(all_sent, 60, 0.5, "the resent deliveries to be sent")
            ward.wait_for(failed, 30)
            shot("job-resent")
            overview.wait_for_function("() => !document.querySelector('#destinations')"
                                       ".textContent.includes('WARD@')", timeout=30_000)
            page.goto(f"{node.url}/ui/monitor")
            page.wait_for_selector("#labels")
            assert "1 of 4 inputs declined" in page.text_content("#declined")
            shot("monitor")
        finally:
            browser.close()
    assert not any(PATIENT in text or "Jane" in text for text in texts)
    assert errors == []
    log = node.log.read_text()
    assert "operator Ada Admin signed in" in log and "operator Ada Admin resent delivery" in log
    assert PATIENT not in log
