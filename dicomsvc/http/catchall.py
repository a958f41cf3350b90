"""The last word on an unexpected exception: a JSON 500, and the exception stops here.

Starlette's ServerErrorMiddleware answers with the app's handler and then re-raises, so
uvicorn logs the whole traceback — and exception messages can quote values read from a
data set (patient data). This middleware sits inside the request log, metrics and audit
(so they see the 500), answers with ``handler`` and lets nothing through.
"""

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .status import ResponseStatus


class CatchAll:
    def __init__(self, app, handler: Callable[[Request, Exception], Awaitable[Response]]):
        self.app = app
        self.handler = handler

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = ResponseStatus(send)
        try:
            await self.app(scope, receive, status)
        except Exception as exc:  # the handler logs its type and the route template, never its message
            response = await self.handler(Request(scope), exc)
            if not status.started:
                await response(scope, receive, send)
            # else the answer was already under way: the client sees it cut short
