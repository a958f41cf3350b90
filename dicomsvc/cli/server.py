"""The uvicorn server ``dicomsvc serve`` runs: its settings, and a deadline for request headers.

uvicorn closes a kept-alive connection that stays idle (``timeout_keep_alive``), but
it has no deadline for a request's headers: a connection that never sends a byte,
or sends one a second and never finishes its headers, stays open for as long as its
client likes (its keep-alive timer is cancelled by the first byte). Headers are read
by the HTTP protocol, before any ASGI code runs, so the deadline lives there:
``HeaderDeadline`` wraps uvicorn's own protocol class (httptools, else h11). It is
armed when a connection opens and whenever a response is complete and the next
request's headers are awaited; it is disarmed as soon as a request's headers are
complete (the protocol starts a new request cycle then). When it fires, the
connection is closed, with ``408 Request Timeout`` (RFC 9110 §15.5.9) if part of a
request had arrived. A request body that is slow to come is the application's
business: it is read in its own task, holding up no one else.
"""

import asyncio

import uvicorn

from ..config import Config

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools is a dependency; h11 is uvicorn's own fallback
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base

_BODY = b'{"error":"request_timeout","detail":"the request headers came too slowly"}'
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


class HeaderDeadline(_Base):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers take longer
    than ``header_timeout`` seconds (from the connection's start, or the previous answer's end)."""

    header_timeout: float = 10.0  # set per server by ``protocol_class``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request arrived since the deadline was armed
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        self._partial = True
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers are complete: it is under way
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # no pipelined request under way: the next one's headers are awaited

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._partial:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def protocol_class(header_timeout: float) -> type[asyncio.Protocol]:
    """``HeaderDeadline`` with its deadline set (uvicorn builds one protocol per connection)."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": float(header_timeout)})


def uvicorn_config(app, config: Config) -> uvicorn.Config:
    """How ``dicomsvc serve`` runs ``app``: DICOMSVC_HOST/PORT, the log level, the header
    deadline (DICOMSVC_HEADER_TIMEOUT) and the keep-alive timeout (DICOMSVC_KEEPALIVE_TIMEOUT)."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        # uvicorn's access log prints query strings (search filters hold patient IDs):
        # dicomsvc.http.accesslog.AccessLog logs requests instead, without paths or queries
        access_log=False,
        lifespan="on",
        http=protocol_class(config.header_timeout),
        timeout_keep_alive=config.keepalive_timeout,
    )
