"""The status an inner ASGI app answered with, for the middlewares that observe requests
(the request log, metrics, the audit trail, the catch-all)."""


class ResponseStatus:
    """A ``send`` wrapper: ``code`` is the answer's status once it started, 500 before."""

    def __init__(self, send):
        self._send = send
        self.code = 500
        self.started = False

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.code, self.started = message["status"], True
        await self._send(message)
