"""The two hottest reads answered from memory, ahead of the middleware stack: ``GET
/image?id=`` (the PNG stored at ingest) and ``GET /tags?id=`` (the tag rows), when their
answer is in the read cache (``readcache``).

Issue 12 asks for ``GET /image`` within 1.5x of a static file server serving the same
PNG. The Starlette stack (request id, request log, metrics, audit, authentication, gzip,
catch-all, exception handling, routing: a dozen layers, each wrapping ``send``) costs
about three times what serving the bytes does, so this middleware, first in the list,
answers these two requests itself when it can do exactly what the stack would, and
hands every other request to the stack untouched. What it does for a request it answers
is what the stack does, by the same functions:

- the request's id (``requestid.request_id``: the client's X-Request-ID or a new one) in
  the answer, the scope's state and the log context; ``anonymous`` as its user;
- no database read: the cache holds only answers of instances that exist (every delete
  ``forget``s its instances as soon as it commits, and a fill that raced a delete is
  dropped: ``readcache``), so a deleted instance is never served from it. Except with an
  index other servers share (PostgreSQL: several replicas, README "Running at scale"): their
  deletes do not reach this process's cache, so a cached answer is given only after a point
  lookup finds the row (gone: forgotten here, and the stack answers 404);
- the same answer: status, headers in the same order, body (tests/test_hotreads.py
  compares it with the stack's, header by header); ``If-None-Match`` on /image (a 304);
- one request-log line (``accesslog``), the request counted and timed (``metrics``), one
  audit record (``audit.base_record``), as the observing middlewares do.

It declines (the stack answers, from scratch) whenever anything differs from the plain
case: authentication on (``DICOMSVC_AUTH`` not ``none``: tokens are checked by the stack),
CORS origins configured, the read cache off, another method, a root path, any query
parameter besides a well-formed ``id``, an ``Accept`` asking for another format, gzip
accepted on /tags, an ``If-None-Match`` with a ``-gzip`` tag, or an answer it cannot give
(an unknown id, an instance without a stored PNG: the stack answers the error). An answer
not in the cache yet is made by the stack's own functions (``http.instances.image`` and
``tags_json``: the row looked up, the file read in an I/O thread, the cache filled) and
answered here, so a first read does not pay for the dozen layers either. An unexpected error before the answer starts also hands the request to the stack.
"""

import contextvars
import logging
import re
import time

from .. import audit, logs, metrics
from ..config import Config
from ..errors import DicomSvcError
from ..identity import ANONYMOUS
from ..imaging.params import is_default, parse_params
from ..storage import instances
from .audit import action_of
from . import instances as stack
from .compression import accepts_gzip
from .requestid import request_id
from .requests import etag_matches

QUERY_ID = re.compile(rb"id=([0-9A-Za-z]{22})")  # shortuuid.uuid(), and nothing else in the query
TARGET = re.compile(rb"(/image|/tags)\?id=([0-9A-Za-z]{22})")  # the same as a request target (answer_now)
DECLINE = ()  # _from_cache: the stack answers this request
IMMUTABLE = b"public, max-age=31536000, immutable"  # as app.IMMUTABLE: stored renderings never change
IMAGE, TAGS = "/image", "/tags"
_log = logging.getLogger("dicomsvc.http")
_SETTLED = "dicomsvc.route"  # routing.settled's scope key: the observers' route template


def observed(access: logging.Logger, method: str, path: str, code: int, start: float) -> None:
    """What ``AccessLog`` and ``MetricsMiddleware`` record of an answered request: one log line,
    the request counted and timed (since ``start``, a ``time.perf_counter()``)."""
    ms = (time.perf_counter() - start) * 1e3
    access.info("%s %s %d %.1fms", method, path, code, ms, extra={"status": code, "duration_ms": round(ms, 1)})
    count, latency = metrics.request_children(method, path, code)
    count.inc()
    latency.observe(ms / 1e3)


class HotReads:
    """Pure ASGI middleware, first in the app's list (``app.create_app``); also what
    ``cli.server``'s protocol calls (``answer_now``) for a cached answer, before any ASGI."""

    def __init__(self, app, config: Config) -> None:
        self.app = app
        self.enabled = config.auth == "none" and not config.cors_origins and config.read_cache_bytes > 0
        self.shared = bool(config.database_url)  # other replicas delete too: a cached answer is checked
        self.access = logging.getLogger("dicomsvc.access")  # accesslog.AccessLog's logger
        self.actions = {path: action_of(path, "GET") for path in (IMAGE, TAGS)}  # the audit trail's
        self.formats: dict[str | None, bool] = {}  # Accept header -> asks for the stored PNG (bounded)

    async def __call__(self, scope, receive, send):
        path = scope.get("path")
        if not (self.enabled and (path == IMAGE or path == TAGS) and scope["type"] == "http"
                and scope["method"] == "GET" and not scope.get("root_path")):  # fmt: skip
            return await self.app(scope, receive, send)
        start, when = time.perf_counter(), time.time_ns()  # made text after the answer (audit.stamp)
        try:
            answer = await self._answer(scope, path)
        except Exception:  # noqa: BLE001 -- whatever it was, the stack answers (and reports) it
            answer = None
        if answer is None:
            return await self.app(scope, receive, send)
        status, headers, body, instance_id = answer
        rid = request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"], state["user"] = rid, ANONYMOUS
        scope[_SETTLED] = (path, {})
        logs.begin_request(logs.RequestContext(rid, lambda: path, lambda: ANONYMOUS.user))
        code = 500  # as ResponseStatus: until the answer has started
        try:
            await send({"type": "http.response.start", "status": status,
                        "headers": [*headers, (b"x-request-id", rid.encode("ascii"))]})  # fmt: skip
            code = status
            await send({"type": "http.response.body", "body": body})
        finally:
            client = scope.get("client")
            self._observe(scope["app"].state, path, code, start, when, rid, client, instance_id)

    def answer_now(self, state, url: bytes, headers: list, client, write) -> bool:
        """A plain GET of ``url`` (the request target: ``/image?id=`` or ``/tags?id=``) answered
        at once from the read cache, for ``cli.server``'s protocol, which calls this before it
        makes a scope and a task: ``write(status, headers, body)`` called with the answer
        ``__call__`` would give (the request id last), observed as ``__call__`` observes it, and
        True; False, nothing done, whenever ``__call__`` would do more than that (a miss, an
        index shared by replicas, a decline). ``state`` is the app's; ``headers`` the request's
        (lower-case names, as in a scope); ``client`` the peer (host, port)."""
        found = TARGET.fullmatch(url) if self.enabled and not self.shared else None
        svc, cache = getattr(state, "svc", None), getattr(state, "read_cache", None)
        if found is None or svc is None or cache is None:
            return False
        start, when = time.perf_counter(), time.time_ns()  # made text after the answer (audit.stamp)
        path, instance_id = found.group(1).decode("ascii"), found.group(2).decode("ascii")
        try:
            answer = self._from_cache(svc, cache, path, instance_id, *_wanted(headers))
        except Exception:  # noqa: BLE001 -- whatever it was, the app answers (and reports) it
            return False
        if not answer:  # a miss (None) or a decline
            return False
        status, answer_headers, body = answer
        rid = request_id({"headers": headers})
        write(status, [*answer_headers, (b"x-request-id", rid.encode("ascii"))], body)
        # the log line in a context of its own (as a request's task has): the protocol's outlives the request
        context = contextvars.copy_context()
        context.run(logs.begin_request, logs.RequestContext(rid, lambda: path, lambda: ANONYMOUS.user))
        try:
            context.run(self._observe, state, path, status, start, when, rid, client, instance_id)
        except Exception:  # noqa: BLE001 -- answered: the protocol must not answer again
            context.run(_log.exception, "a cached read was answered but not recorded")
        return True

    def _observe(self, state, path: str, code: int, start: float, when: int, rid: str, client, instance_id: str) -> None:
        """What the observing middlewares record of an answered request: the log line and metrics
        (``observed``), and the record AuditMiddleware makes (http.audit.base_record), its time the
        request's (``when``: a ``time.time_ns()`` taken as it came, written as text only now)."""
        observed(self.access, "GET", path, code, start)
        trail = audit.trail(getattr(state, "svc", None))
        if trail is not None:
            trail.add([audit.Record(
                time=audit.stamp(when), user=ANONYMOUS.user, role=ANONYMOUS.role, action=self.actions[path], method="GET",
                route=path, instance=instance_id, params="id", status=code, client=client[0] if client else None,
                request_id=rid,
            )])  # fmt: skip

    async def _answer(self, scope, path: str) -> tuple[int, list, bytes, str] | None:
        """(status, headers, body, instance id) exactly as the stack would answer, or None to let it."""
        found = QUERY_ID.fullmatch(scope.get("query_string", b""))
        state = getattr(scope["app"], "state", None)
        svc, cache = getattr(state, "svc", None), getattr(state, "read_cache", None)
        if found is None or svc is None or cache is None:
            return None
        instance_id = found.group(1).decode("ascii")
        wanted = _wanted(scope["headers"])
        answer = self._from_cache(svc, cache, path, instance_id, *wanted)
        if answer == DECLINE:
            return None
        if answer is not None and self.shared and not await instances.instance_exists(svc.db, instance_id):
            cache.forget([instance_id])  # deleted by another replica: the stack's function answers 404
            answer = None
        if answer is None:  # the stack's function: the row looked up, the file read, the cache filled
            answer = await self._fill(svc, cache, path, instance_id, *wanted)
        return None if answer is None else (*answer, instance_id)

    def _from_cache(self, svc, cache, path: str, instance_id: str, accept, if_none_match, accept_encoding):
        """The answer (status, headers, body) from the cache; None if it is not there; DECLINE
        when the stack answers such a request (another format, gzip)."""
        if path == IMAGE:
            if not self._stored_png(accept, svc.config.render_max_size) or (if_none_match and "-gzip" in if_none_match):
                return DECLINE
            body = cache.get(("png", instance_id))  # only an existing instance's stored PNG
            if body is None:
                return None
            etag = b'"%s.png"' % instance_id.encode("ascii")
            if etag_matches(if_none_match, etag.decode("ascii")):
                return 304, _png_headers(etag), b""
            return 200, _png_headers(etag, body), body
        if accept_encoding and accepts_gzip(accept_encoding):
            return DECLINE  # compressed by the stack's gzip middleware
        body = cache.get(("tags", instance_id))
        return None if body is None else (200, _tags_headers(body), body)

    async def _fill(self, svc, cache, path: str, instance_id: str, accept, if_none_match, _encoding):
        """The answer made by the stack's own function (which fills the cache); None for an error
        (the stack answers it)."""
        try:
            if path == TAGS:
                body = await stack.tags_json(svc, instance_id, None, cache)
                return 200, _tags_headers(body), body
            image = await stack.image(svc, {"id": instance_id}, accept, if_none_match, None, cache)
        except DicomSvcError:
            return None
        etag = b'"%s.png"' % instance_id.encode("ascii")
        if image.media_type != "image/png" or image.etag != etag.decode("ascii"):
            return None
        if image.body is None:
            return 304, _png_headers(etag), b""
        return 200, _png_headers(etag, image.body), image.body

    def _stored_png(self, accept: str | None, max_size: int) -> bool:
        """Whether a request with only ``id`` and this ``Accept`` asks for the PNG stored at ingest
        (``parse_params`` decides, as for the stack; its answer kept per header value)."""
        found = self.formats.get(accept)
        if found is None:
            try:
                found = is_default(parse_params({}, accept, max_size))
            except DicomSvcError:
                found = False
            if len(self.formats) < 64:  # browsers send a handful of distinct Accept headers
                self.formats[accept] = found
        return found


def _wanted(headers) -> tuple[str | None, str | None, str | None]:
    """(Accept, If-None-Match, Accept-Encoding) of a request's headers, the first of each."""
    accept = if_none_match = accept_encoding = None
    for name, value in headers:
        if name == b"accept":
            accept = value.decode("latin-1") if accept is None else accept
        elif name == b"if-none-match":
            if_none_match = value.decode("latin-1") if if_none_match is None else if_none_match
        elif name == b"accept-encoding":
            accept_encoding = value.decode("latin-1") if accept_encoding is None else accept_encoding
    return accept, if_none_match, accept_encoding


def _png_headers(etag: bytes, body: bytes | None = None) -> list:
    """The stack's /image headers, in its order: a 304's, or with ``body`` a 200's."""
    headers = [(b"etag", etag), (b"cache-control", IMMUTABLE), (b"vary", b"Accept")]
    if body is not None:
        headers += [(b"content-length", b"%d" % len(body)), (b"content-type", b"image/png")]
    return headers


def _tags_headers(body: bytes) -> list:
    return [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json"), (b"vary", b"Accept-Encoding")]
