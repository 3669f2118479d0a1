"""The operators' web page at ``/ui``: server-rendered pages (Jinja2) with a little htmx.

See docs/ui.md. :func:`install` adds it to the node's FastAPI app.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from node.http.ui import actions, pages
from node.http.ui.auth import CsrfError, Sessions, SignInRequiredError


async def _sign_in(request: Request, exc: Exception) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


async def _bad_csrf(request: Request, exc: Exception) -> HTMLResponse:
    return pages.render(request, "error.html", None, 403, title="Refused",
                        message="This form is stale or was sent from another site: "
                        "reload the page and try again.")


def install(app: FastAPI) -> None:
    """Serve the page under ``/ui`` of ``app`` (whose ``state.node`` is the node)."""
    app.state.ui_sessions = Sessions(app.state.node.settings)
    app.add_exception_handler(SignInRequiredError, _sign_in)
    app.add_exception_handler(CsrfError, _bad_csrf)
    app.include_router(pages.router)
    app.include_router(actions.router)
