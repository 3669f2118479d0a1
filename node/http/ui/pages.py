"""The pages operators read: overview, jobs list, one job, model monitor, and their images."""

from __future__ import annotations

import datetime
import os
import re
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from node import version
from node.http.deps import get_node
from node.http.ui import charts
from node.http.ui.auth import Operator, SignedIn, sessions
from node.jobs import browse
from node.jobs.model import FINAL_STATES
from node.jobs.storage import AREAS
from node.jobs.views import views_folder
from node.settings import check_ae_title

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
STATIC = {"htmx.min.js": "text/javascript", "ui.js": "text/javascript", "ui.css": "text/css"}
STATES = ("queued", "processing", *FINAL_STATES)
CODE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PAGE_SIZE = 50
#: Spool use is counted (a walk of its folders) at most this often, in seconds.
SPOOL_COUNT_S = 10.0

router = APIRouter(prefix="/ui", include_in_schema=False)
_spool_use: dict[str, tuple[float, int]] = {}


def utc(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def day_name(day: int) -> str:
    return datetime.datetime.fromtimestamp(day * 86400, datetime.UTC).strftime("%m-%d")


templates.env.filters["utc"] = utc
templates.env.filters["day"] = day_name


def render(request: Request, name: str, who: Operator | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    node = get_node(request)
    return templates.TemplateResponse(
        request, name, {"operator": who, "ae_title": node.settings.ae_title, **context},
        status_code=status)


def not_found(request: Request, who: Operator, what: str) -> HTMLResponse:
    return render(request, "error.html", who, 404, title="Not found", message=what)




def spool_use(root: Path) -> int:
    """Bytes in the store's areas (counted again after :data:`SPOOL_COUNT_S`)."""
    now = time.monotonic()
    when, used = _spool_use.get(str(root), (0.0, 0))
    if now - when > SPOOL_COUNT_S or when == 0.0:
        used = 0
        for area in AREAS:
            try:
                with os.scandir(root / area) as entries:
                    used += sum(e.stat().st_size for e in entries if e.is_file())
            except OSError:
                continue
        _spool_use[str(root)] = (now, used)
    return used


def overview_context(request: Request) -> dict[str, Any]:
    node = get_node(request)
    s = node.settings
    figures = browse.overview(node.records)
    card = node.model.card if node.model is not None else None
    return {
        "ready": node.ready.is_set() and node.refused is None, "refused": node.refused,
        "model": node.model.info if node.model is not None else None,
        "labels": list(zip(card.labels, card.thresholds, strict=True)) if card else [],
        "fast_path": node.fast_path, "version": version(),
        "uptime_s": int(time.monotonic() - node.started_at),
        "states": {state: figures["states"].get(state, 0) for state in STATES},
        "destinations": figures["destinations"], "chart": charts.hour_chart(figures["bins"]),
        "spool_used_mb": spool_use(Path(s.store or s.spool)) / 2**20,
        "spool_quota_mb": s.spool_quota_mb,
    }


@router.get("", response_class=HTMLResponse)
async def overview(request: Request, who: SignedIn) -> HTMLResponse:
    return render(request, "overview.html", who, **overview_context(request))


@router.get("/overview/panel", response_class=HTMLResponse)
async def overview_panel(request: Request, who: SignedIn) -> HTMLResponse:
    """What the overview polls every few seconds (htmx swaps it in)."""
    return render(request, "_overview_panel.html", who, **overview_context(request))


def parse_time(name: str, text: str, errors: list[str]) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        errors.append(f"{name} {text!r} is not a date or time (YYYY-MM-DD or "
                      "YYYY-MM-DDTHH:MM, UTC)")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def parse_filter(query: dict[str, str]) -> tuple[browse.JobFilter, int | None, list[str]]:
    """The jobs list's filters from a query string, and each bad value named."""
    errors: list[str] = []
    state = query.get("state") or None
    if state is not None and state not in STATES:
        errors.append(f"state {state!r} is not one of {', '.join(STATES)}")
    code = query.get("code") or None
    if code is not None and not CODE_RE.match(code):
        errors.append(f"reason code {code!r} is not a code (letters, digits, '-', '_', '.')")
    calling = (query.get("calling_ae") or "").strip() or None
    if calling is not None:
        try:
            check_ae_title(calling)
        except ValueError as e:
            errors.append(f"calling AE title: {e}")
    since = parse_time("from", query.get("since", ""), errors)
    until = parse_time("until", query.get("until", ""), errors)
    before = None
    if query.get("before"):
        if query["before"].isdigit():
            before = int(query["before"])
        else:
            errors.append(f"page mark {query['before']!r} is not a job number")
    return browse.JobFilter(state, code, calling, since, until), before, errors


@router.get("/jobs", response_class=HTMLResponse)
async def jobs(request: Request, who: SignedIn) -> HTMLResponse:
    query = dict(request.query_params)
    f, before, errors = parse_filter(query)
    rows, next_before = ([], None) if errors else browse.jobs_page(
        get_node(request).records, f, before, PAGE_SIZE)
    keep = {k: v for k, v in query.items() if v and k != "before"}
    return render(request, "jobs.html", who, 400 if errors else 200, jobs=rows,
                  errors=errors, query=query, keep=keep, next_before=next_before,
                  states=STATES)


def thumbnails_shown(settings, summary: dict[str, Any]) -> bool:
    """Whether the page shows this job's thumbnail under the settings of now."""
    if summary.get("thumbnail") is None or settings.ui_thumbnails == "none":
        return False
    burned = (summary.get("source") or {}).get("burned_in_annotation")
    return settings.ui_thumbnails == "all" or burned == "NO"


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job(request: Request, job_id: int, who: SignedIn
              ) -> HTMLResponse:
    node = get_node(request)
    record = node.records.job(job_id)
    if record is None:
        return not_found(request, who, f"There is no job {job_id}.")
    summary = browse.view(node.records, job_id)
    kept = False
    if record.key is not None:
        try:
            kept = node.store.local_path(record.key).is_file()
        except ValueError:
            kept = False
    return render(request, "job.html", who, job=record, view=summary,
                  deliveries=node.records.deliveries_of(job_id), source_kept=kept,
                  show_thumb=summary is not None and thumbnails_shown(node.settings, summary),
                  show_patient=node.settings.ui_show_patient,
                  notice=request.query_params.get("notice"),
                  problem=request.query_params.get("problem"),
                  csrf=who.csrf)


@router.get("/jobs/{job_id}/{name}.png")
async def job_image(request: Request, job_id: int, name: str,
                    who: SignedIn) -> Response:
    node = get_node(request)
    summary = browse.view(node.records, job_id)
    if (summary is None or not thumbnails_shown(node.settings, summary)
            or not re.match(r"^(thumb|overlay-\d{1,2})$", name)):
        return Response(status_code=404)
    path = views_folder(node.settings) / str(job_id) / f"{name}.png"
    if not path.is_file():
        return Response(status_code=404)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private"})


@router.get("/monitor", response_class=HTMLResponse)
async def monitor(request: Request, who: SignedIn) -> HTMLResponse:
    figures = browse.monitor(get_node(request).records)
    days = figures["days"]
    rows = []
    for label, by_day in figures["labels"].items():
        rates = [by_day[d]["rate"] if d in by_day else None for d in days]
        means = [by_day[d]["mean"] if d in by_day else None for d in days]
        n = sum(v["n"] for v in by_day.values())
        rows.append({"label": label, "n": n,
                     "rate": sum(v["rate"] * v["n"] for v in by_day.values()) / n,
                     "mean": sum(v["mean"] * v["n"] for v in by_day.values()) / n,
                     "rates": charts.sparkline(rates), "means": charts.sparkline(means),
                     "last": rates[-1], "last_mean": means[-1]})
    received = sum(figures["received"].values())
    declined = sum(figures["reasons"].values())
    per_day = [{"day": d, "received": figures["received"][d],
                "declined": sum(figures["declined"][d].values())} for d in days]
    return render(request, "monitor.html", who, rows=rows, days=days, received=received,
                  declined=declined, reasons=figures["reasons"], per_day=per_day)


@router.get("/static/{name}")
async def static(name: str, who: SignedIn) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name],
                        headers={"Cache-Control": "private, max-age=3600"})


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    return render(request, "login.html", None, needs_secret=sessions(request).needs_secret,
                  next=request.query_params.get("next", "/ui"), error=None)
