"""The request log: one line per request, never a path or a query string (no PHI)."""

import logging
import time

from . import routing
from .status import ResponseStatus


class AccessLog:
    """One line per request: method, route template, status, milliseconds (``status`` and
    ``duration_ms`` also as record attributes, for the JSON log format).

    Never the path or the query string: search filters carry patient IDs and names,
    and paths carry UIDs. (uvicorn's own access log prints both, so ``dicomsvc
    serve`` turns it off.)
    """

    def __init__(self, app):
        self.app = app
        self.log = logging.getLogger("dicomsvc.access")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), ResponseStatus(send)
        try:
            await self.app(scope, receive, status)
        finally:
            route = routing.settled(scope)[0] or "-"  # also for a request refused before routing
            ms = (time.perf_counter() - start) * 1e3
            extra = {"status": status.code, "duration_ms": round(ms, 1)}
            self.log.info("%s %s %d %.1fms", scope["method"], route, status.code, ms, extra=extra)
