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

The protocol also answers the hottest read itself (issue 12: ``GET /image`` within 1.5x of a
static file server): a plain GET of ``/image?id=`` or ``/tags?id=`` whose answer is in the
read cache is answered as soon as its headers are parsed, by ``HotReads.answer_now`` (the
same answer, log line, metrics and audit record as through the app), in one write, without
a scope, a task or the ASGI send calls (a quarter less server CPU per cached read). Only
when nothing else could tell the difference: httptools, HTTP/1.1 kept alive, no request
under way on the connection (answers stay in order), no body, no upgrade or Expect, no
proxy headers (uvicorn's ProxyHeadersMiddleware would rewrite the client), no root path,
the transport not paused. Anything else goes to uvicorn as before.
"""

import asyncio
import functools
from types import SimpleNamespace

import uvicorn

from .. import libpages
from ..config import Config
from ..http.hotreads import HotReads

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools is a dependency; h11 is uvicorn's own fallback
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base

    STATUS_LINE = None  # and no answers from the protocol


_FOR_UVICORN = {b"content-length", b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-proto"}  # a body, a proxy
_BODY = b'{"error":"request_timeout","detail":"the request headers came too slowly"}'
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


class HeaderDeadline(_Base):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers take longer
    than ``header_timeout`` seconds (from the connection's start, or the previous answer's end)."""

    header_timeout: float = 10.0  # set per server by ``protocol_class``
    hot = None  # set per server by ``protocol_class``: answers a cached read at once (HotReads.answer_now)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request arrived since the deadline was armed
        # the cycle of a request ``hot`` answered: what uvicorn looks at of its last request's
        self._answered = SimpleNamespace(response_complete=True, message_event=asyncio.Event())
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        self._partial = True
        super().data_received(data)
        if self.cycle is not cycle and not self.cycle.response_complete:  # a request is under way
            self._disarm()

    def on_headers_complete(self) -> None:
        if self.hot is not None and self._plain_get() and self.hot(self.url, self.headers, self.client, self._write):
            self.cycle = self._answered
            self.on_response_complete()  # as after any answer: the keep-alive timer and the deadline armed
            return
        super().on_headers_complete()

    def _plain_get(self) -> bool:
        """Whether the request whose headers were just parsed can be answered here (module docstring)."""
        parser = self.parser
        return (
            (self.cycle is None or self.cycle.response_complete)
            and parser.get_method() == b"GET"
            and parser.get_http_version() == "1.1"
            and parser.should_keep_alive()
            and not parser.should_upgrade()
            and not self.expect_100_continue
            and not self.root_path
            and not self.flow.write_paused
            and not any(name in _FOR_UVICORN for name, _ in self.headers)
        )  # fmt: skip

    def _write(self, status: int, headers: list, body: bytes) -> None:
        """The answer as uvicorn writes it (its status line, its date and server headers first), in one
        write (uvloop: one ``writev``, the body not copied)."""
        head = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        self.transport.writelines((b"".join(head), body))

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


def protocol_class(header_timeout: float, hot=None) -> type[asyncio.Protocol]:
    """``HeaderDeadline`` with its deadline set (uvicorn builds one protocol per connection) and,
    unless None or uvicorn runs h11, ``hot(url, headers, client, write) -> bool`` answering cached reads."""
    hot = staticmethod(hot) if hot is not None and STATUS_LINE is not None else None
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": float(header_timeout), "hot": hot})


class Server(uvicorn.Server):
    """uvicorn's server, telling the app when it begins to stop: ``app.state.stopping`` is set
    before uvicorn waits for the requests under way to finish (it waits as long as they take),
    so a request held open on purpose (``GET /jobs/{id}?wait=``) answers at once instead of
    holding up the shutdown; and letting go of the library pages only its start ran."""

    async def startup(self, sockets=None) -> None:
        """uvicorn's start (the lifespan: the service, its workers; then the listening socket);
        once started, the library code only starting ran leaves the resident set (``libpages``)."""
        await super().startup(sockets=sockets)
        if self.started:
            libpages.release()

    async def shutdown(self, sockets=None) -> None:
        stopping = getattr(getattr(self.config.app, "state", None), "stopping", None)  # made by the lifespan
        if stopping is not None:
            stopping.set()
        await super().shutdown(sockets=sockets)


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
        http=protocol_class(config.header_timeout, _hot_reads(app, config)),
        timeout_keep_alive=config.keepalive_timeout,
    )


def _hot_reads(app, config: Config):
    """``HotReads.answer_now`` on the app's state, for the protocol; None for an app without one."""
    state = getattr(app, "state", None)
    hot = HotReads(app, config)
    return None if state is None or not hot.enabled else functools.partial(hot.answer_now, state)
