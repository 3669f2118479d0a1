"""Dependencies shared by the routers: the node, authentication, bounded bodies."""

from __future__ import annotations

import hmac

from fastapi import Request

from node.http.errors import ApiError


def get_node(request: Request):
    return request.app.state.node


async def require_token(request: Request) -> None:
    """Bearer-token check when the node has ``http_token`` set."""
    token = request.app.state.node.settings.http_token
    if not token:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                             token.encode()):
        request.app.state.node.audit.user_authentication(
            None, False, address=request.client.host if request.client else None,
            detail=f"bearer token {'refused' if value else 'missing'}: {request.url.path}")
        raise ApiError(401, "unauthorized", "a valid bearer token is required",
                          headers={"WWW-Authenticate": 'Bearer realm="cxr-node"'})


def body_limit(request: Request) -> int:
    return int(request.app.state.node.settings.http_max_body_mb * 2**20)


async def read_body(request: Request) -> bytes:
    """The request body, refusing (413) one over the size limit before reading it all."""
    limit = body_limit(request)
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise ApiError(413, "too-large", f"body of {length} bytes exceeds {limit}")
        except ValueError:
            raise ApiError(400, "invalid-request", "Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too-large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def replay(request: Request, body: bytes) -> Request:
    """A request like ``request`` whose body is ``body`` (already read), for parsers that
    read the body themselves (``form()``)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)
