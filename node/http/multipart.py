"""multipart/related bodies (PS3.18 8.6.1.2): parse STOW-RS requests, build responses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from node.http.errors import ApiError


def boundary_of(content_type: str) -> str:
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not m:
        raise ApiError(400, "invalid-request", "multipart body without a boundary")
    return m.group(1)


def related_type(content_type: str) -> str | None:
    m = re.search(r'type="?([^";]+)"?', content_type, re.IGNORECASE)
    return m.group(1).strip().lower() if m else None


def parse_related(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body: (headers with lower-case names, payload)."""
    delimiter = b"--" + boundary_of(content_type).encode()
    pieces = body.split(delimiter)
    if len(pieces) < 3:
        raise ApiError(400, "invalid-request", "multipart body has no parts")
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        piece = piece.removeprefix(b"\r\n")
        head, sep, payload = piece.partition(b"\r\n\r\n")
        if not sep:
            raise ApiError(400, "invalid-request", "multipart part without headers end")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts


def build_related(items: Iterable[bytes], part_type: str = "application/dicom"
                  ) -> tuple[bytes, str]:
    """A multipart/related body of ``items``; returns (body, Content-Type header value)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for data in items:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'
