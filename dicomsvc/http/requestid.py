"""Request ids: ``X-Request-ID`` taken from the client (printable ASCII, at most 128
characters) or made here, returned on every answer, and on every log line and audit
record of the request (``dicomsvc.logs.RequestContext``)."""

import re
import uuid

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
    return str(uuid.uuid4())


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
