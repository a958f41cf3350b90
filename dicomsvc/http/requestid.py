"""Request ids: ``X-Request-ID`` taken from the client (printable ASCII, at most 128
characters) or made here, returned on every answer, and on every log line and audit
record of the request (``dicomsvc.logs.RequestContext``)."""

import os
import re

from ..logs import RequestContext, begin_request
from . import routing
from .who import who

HEADER = b"x-request-id"
MAX_CHARS = 128
VALID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_CHARS)  # visible ASCII: no spaces, controls or line breaks


def request_id(scope: dict) -> str:
    """The client's X-Request-ID if it is acceptable, else a new one (a UUID4)."""
    for name, value in scope.get("headers") or ():
        if name == HEADER:
            if VALID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_id()


_random = bytearray()  # os.urandom bytes not used yet: one system call for 256 ids, not one each


def new_id() -> str:
    """A random (version 4) UUID, RFC 9562 §5.4, as ``str(uuid.uuid4())`` is, from the same source
    (``os.urandom``) read 4 KiB at a time: a third of ``uuid4``'s time. Called on the event loop only
    (the middlewares), never from two threads at once."""
    global _random
    if len(_random) < 16:
        _random = bytearray(os.urandom(4096))
    raw = _random[-16:]
    del _random[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant: RFC 9562
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class RequestId:
    """Pure ASGI middleware (the outermost): sets the request's id and log context, and
    adds ``X-Request-ID`` to the answer. ``scope["state"]["request_id"]`` holds it too,
    for the error handlers that run outside the middleware."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        begin_request(RequestContext(rid, lambda: routing.match(scope)[0], lambda: who(scope)[0]))
        header = (b"x-request-id", rid.encode("ascii"))

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if not any(name.lower() == HEADER for name, _ in headers):  # the 500 handler adds its own
                    message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
