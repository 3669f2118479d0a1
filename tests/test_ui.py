"""The operators' page at /ui, in this process (FastAPI ``TestClient``, the node not started:
its records and spool are real, no model is loaded): sign-in and its cookie, what each page
shows of the records, bad input, resend and run again."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_node_inprocess import small_cr

from node.http import create_app
from node.http.ui.auth import COOKIE, Sessions
from node.jobs import browse
from node.jobs.model import JobOutcome, ResultObject
from node.jobs.storage import INCOMING
from node.service import Node
from node.settings import Settings

TOKEN = "s3cret-token"


def make(tmp_path: Path, **settings) -> tuple[Node, TestClient]:
    node = Node(Settings(spool=tmp_path / "spool", model="in-memory", **settings))
    return node, TestClient(create_app(node))  # no "with": the node is not started


def sign_in(client: TestClient, name: str = "Ada Admin", secret: str = TOKEN):
    return client.post("/ui/login", data={"name": name, "secret": secret, "next": "/ui"},
                       follow_redirects=False)


def csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def summary(**source) -> dict:
    return {"findings": [{"label": "Effusion", "probability": 0.9, "threshold": 0.5,
                          "positive": True},
                         {"label": "Nodule", "probability": 0.1, "threshold": 0.4,
                          "positive": False}],
            "explained": [{"label": "Effusion", "method": "gradcam", "suppressed": False,
                           "suppressed_reason": None, "overlay": None,
                           "sanity": {"randomised-model": {"passed": True, "detail": "r 0.1"}}}],
            "explain_error": None, "regions": [], "results": {"sr": "1.2.3.4", "sc": "1.2.3.5"},
            "source": {"study_instance_uid": "1.2.9", "series_instance_uid": "1.2.9.1",
                       "sop_instance_uid": "1.2.9.1.1", "modality": "CR",
                       "study_date": "20260101", "burned_in_annotation": "NO", **source},
            "thumbnail": None}


def test_nothing_under_ui_without_signing_in_when_a_token_is_set(tmp_path: Path) -> None:
    _node, client = make(tmp_path, http_token=TOKEN)
    for path in ("/ui", "/ui/jobs", "/ui/jobs/1", "/ui/monitor", "/ui/static/htmx.min.js",
                 "/ui/overview/panel", "/ui/jobs/1/thumb.png"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith(
            "/ui/login?next="), path
    form = client.get("/ui/login")
    assert form.status_code == 200 and 'name="secret"' in form.text
    refused = sign_in(client, secret="wrong")
    assert refused.status_code == 401 and "wrong secret" in refused.text
    assert COOKIE not in client.cookies
    answer = sign_in(client)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    cookie = answer.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/ui", "max-age=28800"):
        assert attribute in cookie
    assert "secure" not in cookie  # no TLS here
    page = client.get("/ui")
    assert page.status_code == 200 and "Ada Admin" in page.text
    assert client.get("/ui/static/htmx.min.js").status_code == 200
    # the cookie never opens the JSON routes: they want the bearer token
    cookie_header = {"Cookie": f"{COOKIE}={client.cookies[COOKIE]}"}
    assert client.get("/jobs", headers=cookie_header).status_code == 401


def test_a_forged_or_expired_cookie_is_refused(tmp_path: Path) -> None:
    _node, client = make(tmp_path, http_token=TOKEN)
    sign_in(client)
    value = client.cookies[COOKIE]
    payload, _, signature = value.rpartition(".")
    client.cookies.clear()
    assert client.get("/ui", headers={"Cookie": f"{COOKIE}={payload}x.{signature}"},
                      follow_redirects=False).status_code == 303
    sessions = client.app.state.ui_sessions
    assert sessions.read(value).name == "Ada Admin"
    assert sessions.read(value, now=time.time() + 8 * 3600 + 1) is None  # 8 h by default


def test_operators_file_names_who_may_sign_in(tmp_path: Path) -> None:
    operators = tmp_path / "operators"
    operators.write_text("ada:first-secret\nbob: second-secret\n")
    _node, client = make(tmp_path, http_token=TOKEN, ui_operators_file=operators)
    assert sign_in(client, "ada", "second-secret").status_code == 401
    assert sign_in(client, "eve", TOKEN).status_code == 401  # the shared token is not enough
    assert sign_in(client, "bob", "second-secret").status_code == 303


def test_the_cookie_is_secure_under_tls(tmp_path: Path) -> None:
    settings = Settings(spool=tmp_path, model="m").model_copy(
        update={"tls_cert": tmp_path / "server.crt"})
    sessions = Sessions(settings)
    client = TestClient(create_app(Node(Settings(spool=tmp_path / "s", model="m"))))
    value, seconds = sessions.issue("ada")
    from fastapi.responses import Response

    response = Response()
    sessions.set_cookie(response, value, seconds)
    assert "secure" in response.headers["set-cookie"].lower()
    assert sessions.read(value).name == "ada"
    assert client.app.state.ui_sessions.read(value) is None  # another process's key


def test_without_a_token_a_name_is_enough_and_posts_need_the_csrf_token(tmp_path: Path
                                                                          ) -> None:
    node, client = make(tmp_path)
    assert 'name="secret"' not in client.get("/ui/login").text
    assert sign_in(client, "night shift", "").status_code == 303
    job = node.records.open("incoming/x.dcm", "1.2.3", "MOD", "dimse")
    node.records.close(job, JobOutcome.done(), [("PACS@127.0.0.1:104",
                                                 ResultObject("outbox/a.dcm", "1.2.5", "1.2",
                                                              "1.2.840.10008.1.2.1"))])
    [d] = node.records.deliveries_of(job)
    node.records.delivery_failed(d.id, "association rejected", None)
    path = f"/ui/jobs/{job}/deliveries/{d.id}/resend"
    refused = client.post(path, data={"csrf": "forged"}, follow_redirects=False)
    assert refused.status_code == 403 and "another site" in refused.text
    assert node.records.deliveries_of(job)[0].state == "failed"


def test_overview_shows_jobs_by_state_and_deliveries_per_destination(tmp_path: Path) -> None:
    node, client = make(tmp_path)
    sign_in(client, "ada", "")
    r = node.records
    for _ in range(3):
        r.close(r.open(None, None, None, "http"), JobOutcome.done())
    r.open("incoming/s.dcm", "1.2", "MOD", "dimse", outcome=JobOutcome("skipped", "view",
                                                                        "lateral view"))
    job = r.open("incoming/q.dcm", "1.3", "MOD", "dimse")
    r.close(job, JobOutcome.done(), [("PACS@h:104", ResultObject("outbox/b.dcm", "1.4", "1.2",
                                                                 "1.2.840.10008.1.2.1"))])
    r.delivery_failed(r.deliveries_of(job)[0].id, "refused", None)
    page = client.get("/ui/overview/panel").text
    counts = dict(re.findall(r'data-state="(\w+)">(\d+)<', page))
    assert counts == {"queued": "0", "processing": "0", "done": "4", "skipped": "1",
                      "failed": "0"}
    assert re.search(r"PACS@h:104</td><td class=\"num\">0</td><td class=\"num bad\">1<", page)
    assert "<rect" in page and "5 jobs closed" in page  # 4 done, 1 skipped
    assert 'hx-trigger="every 5s"' in client.get("/ui").text


def test_jobs_list_filters_and_names_a_bad_filter(tmp_path: Path) -> None:
    node, client = make(tmp_path)
    sign_in(client, "ada", "")
    r = node.records
    r.open("incoming/1.dcm", "1.1", "CT1", "dimse", outcome=JobOutcome("skipped", "view", "x"))
    r.open("incoming/2.dcm", "1.2", "MOD", "dimse", outcome=JobOutcome("skipped", "modality",
                                                                        "CT"))
    r.open("incoming/3.dcm", "1.3", "MOD", "stow")
    page = client.get("/ui/jobs", params={"state": "skipped", "calling_ae": "MOD"})
    assert page.status_code == 200
    assert re.findall(r'href="/ui/jobs/(\d+)"', page.text) == ["2"]
    bad = client.get("/ui/jobs", params={"state": "lost", "since": "yesterday"})
    assert bad.status_code == 400
    assert "state &#39;lost&#39; is not one of" in bad.text
    assert "from &#39;yesterday&#39; is not a date" in bad.text
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert re.findall(r'href="/ui/jobs/(\d+)"',
                      client.get("/ui/jobs", params={"since": today}).text) == ["3", "2", "1"]
    assert re.findall(r'href="/ui/jobs/(\d+)"',
                      client.get("/ui/jobs", params={"until": today}).text) == []


def test_a_job_page_shows_findings_uids_and_deliveries_and_no_patient(tmp_path: Path) -> None:
    node, client = make(tmp_path)
    sign_in(client, "ada", "")
    r = node.records
    job = r.open("incoming/j.dcm", "1.2.9.1.1", "MOD", "dimse")
    r.close(job, JobOutcome.done())
    browse.keep_view(r, job, time.time(), {**summary(), "patient": {"PatientName": "Doe^Jane"}},
                     [("Effusion", 0.9, True), ("Nodule", 0.1, False)])
    page = client.get(f"/ui/jobs/{job}").text
    assert re.search(r"<td>Effusion</td><td class=\"num\">0.900</td><td class=\"num\">0.500"
                     r"</td><td>yes</td>", page)
    assert "1.2.3.4" in page and "randomised-model" in page and "Doe^Jane" not in page
    assert 'id="source-gone"' in page  # the source was never stored here
    missing = client.get("/ui/jobs/999")
    assert missing.status_code == 404 and "There is no job 999" in missing.text
    assert client.get(f"/ui/jobs/{job}/thumb.png").status_code == 404


def test_patient_shown_only_when_the_setting_allows(tmp_path: Path) -> None:
    node, client = make(tmp_path, ui_show_patient=True)
    sign_in(client, "ada", "")
    job = node.records.open(None, "1.2", None, "http")
    node.records.close(job, JobOutcome.done())
    browse.keep_view(node.records, job, time.time(),
                     {**summary(), "patient": {"PatientName": "Doe^Jane"}}, [])
    assert "Doe^Jane" in client.get(f"/ui/jobs/{job}").text


def test_resend_of_a_failed_delivery_and_of_one_that_has_not_failed(tmp_path: Path) -> None:
    node, client = make(tmp_path)
    sign_in(client, "ada", "")
    r = node.records
    job = r.open("incoming/r.dcm", "1.2", "MOD", "dimse")
    obj = ResultObject("outbox/r.dcm", "1.2.5", "1.2", "1.2.840.10008.1.2.1")
    r.close(job, JobOutcome.done(), [("A@h:1", obj), ("B@h:2", obj)])
    failed, pending = r.deliveries_of(job)
    r.delivery_failed(failed.id, "connection refused", None)
    token = csrf(client, f"/ui/jobs/{job}")
    page = client.post(f"/ui/jobs/{job}/deliveries/{pending.id}/resend", data={"csrf": token})
    assert "has not failed (it is pending): there is nothing to resend" in page.text
    page = client.post(f"/ui/jobs/{job}/deliveries/{failed.id}/resend", data={"csrf": token})
    assert page.status_code == 200 and "queued to be sent again" in page.text
    assert [d.state for d in r.deliveries_of(job)] == ["pending", "pending"]
    gone = client.post(f"/ui/jobs/{job}/deliveries/77/resend", data={"csrf": token})
    assert gone.status_code == 404


def test_run_again_while_the_source_is_kept_and_says_so_when_gone(tmp_path: Path,
                                                                  cr_path: Path) -> None:
    node, client = make(tmp_path)
    sign_in(client, "ada", "")
    key = node.store.put(INCOMING, small_cr(cr_path))
    job = node.records.open(key, "1.2", "MOD", "dimse")
    node.records.close(job, JobOutcome("failed", "internal", "RuntimeError"))
    token = csrf(client, f"/ui/jobs/{job}")
    page = client.post(f"/ui/jobs/{job}/rerun", data={"csrf": token})
    assert page.status_code == 200 and f"Job {job} runs again as this job" in page.text
    [again] = node.records.open_jobs()
    assert again.id != job and again.calling_ae == "MOD" and node.intake.depth() == 1
    node.store.delete(key)
    page = client.post(f"/ui/jobs/{job}/rerun", data={"csrf": token})
    assert "is no longer kept" in page.text and len(node.records.open_jobs()) == 1


def test_monitor_shows_positive_rates_and_declines(tmp_path: Path) -> None:
    node, client = make(tmp_path)
    sign_in(client, "ada", "")
    r = node.records
    now = time.time()
    for i, positive in enumerate([True, False, False, True]):
        job = r.open(None, None, None, "http")
        r.close(job, JobOutcome.done())
        browse.keep_view(r, job, now - (i % 2) * 86400, summary(),
                         [("Effusion", 0.8 if positive else 0.2, positive)])
    r.open("incoming/v.dcm", None, None, "dimse", outcome=JobOutcome("skipped", "view", "x"))
    figures = browse.monitor(r, now=now)
    today, yesterday = figures["days"][-1], figures["days"][-2]
    assert figures["labels"]["Effusion"][today] == {"n": 2, "rate": 0.5, "mean": 0.5}
    assert figures["labels"]["Effusion"][yesterday]["rate"] == 0.5
    assert figures["reasons"] == {"view": 1} and figures["received"][today] == 5
    page = client.get("/ui/monitor").text
    assert "1 of 5 inputs declined (20.0 %)" in page
    assert re.search(r"<td>Effusion</td><td class=\"num\">4</td><td class=\"num\">50.0 %", page)


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/ui"])
def test_sign_in_never_sends_the_browser_to_another_site(tmp_path: Path, target: str) -> None:
    _node, client = make(tmp_path)
    answer = client.post("/ui/login", data={"name": "ada", "next": target},
                         follow_redirects=False)
    assert answer.headers["location"] == "/ui"


def test_operators_actions_are_in_the_audit_trail_by_name(tmp_path: Path, cr_path: Path
                                                          ) -> None:
    """Sign-in (refused and accepted), run again and sign-out are audit messages (PS3.15
    A.5.3) naming the operator: User Authentication, DICOM Instances Accessed."""
    from lxml import etree

    node, client = make(tmp_path, http_token=TOKEN)
    assert sign_in(client, secret="wrong").status_code == 401
    sign_in(client)
    key = node.store.put(INCOMING, small_cr(cr_path))
    job = node.records.open(key, "1.2", "MOD", "dimse")
    node.records.close(job, JobOutcome("failed", "internal", "RuntimeError"))
    token = csrf(client, f"/ui/jobs/{job}")
    assert "runs again" in client.post(f"/ui/jobs/{job}/rerun", data={"csrf": token}).text
    client.post("/ui/logout", data={"csrf": token})
    node.audit.close()
    events = []
    for line in (tmp_path / "spool" / "audit.log").read_text().splitlines():
        root = etree.fromstring(line.encode())
        ident = root.find("EventIdentification")
        users = [p.get("UserID") for p in root.findall("ActiveParticipant")
                 if p.get("UserIsRequestor") == "true"]
        events.append((ident.find("EventID").get("csd-code"),
                       ident.get("EventOutcomeIndicator"),
                       [t.get("csd-code") for t in ident.findall("EventTypeCode")], users))
    assert events == [
        ("110114", "4", ["110122"], ["Ada Admin"]),  # refused: minor failure
        ("110114", "0", ["110122"], ["Ada Admin"]),
        ("110104", "0", [], ["MOD"]),  # run again: the intake takes the source in again
        ("110103", "0", [], ["Ada Admin"]),  # ... on the operator's request
        ("110114", "0", ["110123"], ["Ada Admin"]),
    ]
