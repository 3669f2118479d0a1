"""Security of the ways out: TLS to DIMSE destinations, credentials for DICOMweb ones.

The settings name files and environment variables, never a secret itself, so no secret is
on a command line or in the settings. Each is read when a delivery is sent (a renewed token
or certificate is used without a restart); one that cannot be read fails that delivery with
a reason naming the file or variable, and it is retried like any other failure. A secret is
never put in a log line, an error, a record or a ``repr``.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OutboundError(Exception):
    """A destination's TLS files or credentials cannot be loaded now (the reason names the
    file or variable, never its content)."""


class _ErrorNoted(ssl.SSLSocket):
    """An ``SSLSocket`` that keeps on its context why TLS failed: in the handshake (a
    certificate not trusted), or in the alert that follows it (TLS 1.3: the peer refused our
    client certificate). pynetdicom only logs such an error and reports the association as
    aborted. Installed through the documented ``SSLContext.sslsocket_class``."""

    def _note(self, e: OSError) -> None:
        context = self.context
        if isinstance(context, ClientContext) and context.tls_error is None:
            context.tls_error = e

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as e:
            self._note(e)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as e:
            self._note(e)
            raise


class ClientContext(ssl.SSLContext):
    """A client TLS context for one association; ``tls_error``: why TLS failed, if it did
    (in the handshake or in an alert)."""

    tls_error: OSError | None = None
    sslsocket_class = _ErrorNoted

    def failure(self) -> str | None:
        """Why TLS failed, in words (OpenSSL's, without its source line), or ``None``."""
        if self.tls_error is None:
            return None
        return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(self.tls_error)) or \
            type(self.tls_error).__name__


class DestinationTLS(BaseModel):
    """TLS to one DIMSE destination: the destination's certificate is verified (against
    ``ca`` or the system's CAs, and its name); ``cert`` and ``key`` answer a destination that
    asks for a client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: Path | None = Field(None, description="PEM CA bundle that signed the destination's "
                            "certificate; none: the system's CAs")
    cert: Path | None = Field(None, description="PEM client certificate")
    key: Path | None = Field(None, description="PEM private key of cert")
    server_name: str | None = Field(None, description="name the destination's certificate "
                                    "must carry; none: the host of the destination")

    @model_validator(mode="after")
    def _files(self) -> DestinationTLS:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path} is not a file")
        return self

    def client_context(self) -> ClientContext:
        """A new context (TLS 1.2+, certificate and host name verified) for one association.

        Raises:
            OutboundError: a file is gone or not PEM (named; the key's content never shown).
        """
        context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if self.ca is not None:
                context.load_verify_locations(cafile=str(self.ca))
            else:
                context.load_default_certs()
            if self.cert is not None and self.key is not None:
                context.load_cert_chain(str(self.cert), str(self.key))
        except OSError as e:  # ssl.SSLError is one
            files = ", ".join(str(p) for p in (self.ca, self.cert, self.key) if p)
            raise OutboundError(f"TLS files ({files}) cannot be loaded: "
                                f"{getattr(e, 'reason', None) or e.strerror or type(e).__name__}"
                                ) from e
        return context


class Authorization:
    """A ``requests`` auth callable: sets the ``Authorization`` header of each request; its
    ``repr`` and ``str`` hide the credentials."""

    def __init__(self, scheme: str, credentials: str) -> None:
        self.scheme = scheme
        self._value = f"{scheme} {credentials}"

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return f"Authorization({self.scheme} <hidden>)"

    __str__ = __repr__


class DicomwebAuth(BaseModel):
    """How to authenticate to one DICOMweb destination: exactly one of a bearer token or
    basic credentials (one line ``user:password``), from an environment variable or a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bearer_env: str | None = Field(None, description="environment variable with the token")
    bearer_file: Path | None = Field(None, description="file with the token")
    basic_env: str | None = Field(None, description="environment variable with user:password")
    basic_file: Path | None = Field(None, description="file with one line user:password")

    @model_validator(mode="after")
    def _one(self) -> DicomwebAuth:
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of bearer_env, bearer_file, basic_env, "
                             f"basic_file (got {', '.join(given) or 'none'})")
        return self

    def _secret(self) -> str:
        """The secret's text, stripped; :class:`OutboundError` naming where it is missing."""
        variable = self.bearer_env or self.basic_env
        if variable is not None:
            value = os.environ.get(variable, "").strip()
            if not value:
                raise OutboundError(f"environment variable {variable} is not set")
            return value
        path = self.bearer_file or self.basic_file
        try:
            value = Path(str(path)).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise OutboundError(f"credentials file {path} cannot be read: "
                                f"{getattr(e, 'strerror', None) or type(e).__name__}") from e
        if not value:
            raise OutboundError(f"credentials file {path} is empty")
        return value

    def http_auth(self) -> Authorization:
        """The ``requests`` authentication for one request, from the secret read now.

        Raises:
            OutboundError: the variable is not set, the file is unreadable, or basic
                credentials are not ``user:password``.
        """
        secret = self._secret()
        if self.bearer_env or self.bearer_file:
            return Authorization("Bearer", secret)
        user, _, password = secret.partition(":")
        if not user or not password:
            where = self.basic_env or self.basic_file
            raise OutboundError(f"basic credentials in {where} are not user:password")
        return Authorization("Basic", base64.b64encode(secret.encode()).decode("ascii"))
