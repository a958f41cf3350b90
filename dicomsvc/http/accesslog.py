"""The request log: one line per request, never a path or a query string (no PHI)."""

import logging
import time


class AccessLog:
    """One line per request: method, handler, status, milliseconds.

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
        start, status = time.perf_counter(), [500]

        async def capture(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            handler = getattr(scope.get("endpoint"), "__name__", "-")
            self.log.info("%s %s %d %.1fms", scope["method"], handler, status[0], (time.perf_counter() - start) * 1e3)
