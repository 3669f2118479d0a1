"""Schemathesis hooks (SCHEMATHESIS_HOOKS): send STOW-RS bodies as the raw bytes generated."""

import schemathesis


@schemathesis.serializer("multipart/related")
def related(ctx, value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
