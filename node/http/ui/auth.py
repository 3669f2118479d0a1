"""Signing in to ``/ui``: operators, session cookies, protection against cross-site requests.

An operator signs in with a name and a secret: a line ``NAME:SECRET`` of
``ui_operators_file``, else the node's ``http_token`` (any name), else (no token: the JSON
routes are open too) a name alone, so that every action is logged with a name. The session
is a cookie signed with a key of this process (a restart signs everyone out): ``HttpOnly``,
``SameSite=Strict``, ``Secure`` under TLS, ``Path=/ui``, expiring after
``ui_session_hours``. It opens ``/ui`` only: the other routes read bearer tokens and never
look at it. Every POST carries the session's CSRF token as well.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from node.settings import Settings

logger = logging.getLogger(__name__)

COOKIE = "cxr_ui"
#: What an operator's name may be (it is written to logs and audit records).
NAME_RE = re.compile(r"^[\w .@'-]{1,64}$")


class UiError(Exception):
    """Base of the page's errors."""


class SignInRequiredError(UiError):
    """No valid session: the page sends the browser to the sign-in form."""


class CsrfError(UiError):
    """A POST without this session's CSRF token (a cross-site request, or a stale form)."""


@dataclass(frozen=True)
class Operator:
    name: str
    csrf: str
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Sessions:
    """Signs and reads session cookies with a key made at start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._key = secrets.token_bytes(32)

    @property
    def needs_secret(self) -> bool:
        return bool(self.settings.ui_operators_file or self.settings.http_token)

    def check(self, name: str, secret: str) -> bool:
        """Whether ``name`` may sign in with ``secret``."""
        s = self.settings
        if not NAME_RE.match(name):
            return False
        if s.ui_operators_file is not None:
            try:
                lines = s.ui_operators_file.read_text().splitlines()
            except OSError as e:
                logger.error("ui_operators_file cannot be read: %s", e)
                return False
            for line in lines:
                who, sep, known = line.partition(":")
                if sep and who.strip() == name and hmac.compare_digest(
                        known.strip().encode(), secret.encode()):
                    return True
            return False
        if s.http_token:
            return hmac.compare_digest(secret.encode(), s.http_token.encode())
        return True

    def issue(self, name: str) -> tuple[str, int]:
        """A new session's cookie value and its lifetime in seconds."""
        seconds = int(self.settings.ui_session_hours * 3600)
        payload = _b64(json.dumps({"n": name, "e": time.time() + seconds,
                                   "c": secrets.token_urlsafe(24)}).encode())
        return f"{payload}.{self._sign(payload)}", seconds

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def read(self, value: str | None, now: float | None = None) -> Operator | None:
        """The operator of a cookie that this process signed and that has not expired
        (by ``now``, default the time of the call)."""
        if not value or "." not in value:
            return None
        payload, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            operator = Operator(str(data["n"]), str(data["c"]), float(data["e"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        return operator if operator.expires > (time.time() if now is None else now) else None

    def set_cookie(self, response, value: str, seconds: int) -> None:
        response.set_cookie(COOKIE, value, max_age=seconds, path="/ui", httponly=True,
                            samesite="strict", secure=self.settings.tls_cert is not None)

    def clear_cookie(self, response) -> None:
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict",
                               secure=self.settings.tls_cert is not None)


def sessions(request: Request) -> Sessions:
    return request.app.state.ui_sessions


async def operator(request: Request) -> Operator:
    """The signed-in operator (a dependency of every page but the sign-in form)."""
    found = sessions(request).read(request.cookies.get(COOKIE))
    if found is None:
        raise SignInRequiredError()
    return found


async def checked(request: Request) -> tuple[Operator, dict[str, str]]:
    """The operator of a POST whose form carries the session's CSRF token, and the form."""
    who = await operator(request)
    form = {k: str(v) for k, v in (await request.form()).items()}
    if not hmac.compare_digest(form.get("csrf", "").encode(), who.csrf.encode()):
        raise CsrfError()
    return who, form


#: A page's operator (signed in), and a POST's operator and form (CSRF token checked).
SignedIn = Annotated[Operator, Depends(operator)]
Posted = Annotated[tuple[Operator, dict[str, str]], Depends(checked)]
