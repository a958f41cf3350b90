"""``POST /dicom`` of ``{"path"}`` (one file under the import root) or of one instance as an
``application/dicom`` body answered ahead of the middleware stack, as ``hotreads`` answers
``GET /image`` and ``/tags``.

Issue 12 counts the server's CPU per ingested instance; the stack's dozen layers (request
id, request log, metrics, audit, authentication, gzip, catch-all, exception handling,
routing: each wrapping ``send``) cost a measurable part of it (bench: ~0.3 ms of ~1.3 ms of
server CPU per request). This middleware, right after ``HotReads``, ingests the plain case
itself, by the stack's own functions (``intake.single``, ``Service.ingest_one`` -- which wakes the
forwarder as for any ingest; routing rules' forwards are queued in the ingest's own
transaction), and answers what the stack would answer:

- status, headers in the same order and body (starlette's ``JSONResponse``, as
  ``app.post_dicom``; tests/test_hotpost.py compares them with the stack's, header by header),
  the request's id (``requestid.request_id``) last;
- one request-log line (``accesslog``), the request counted and timed (``metrics``), the
  ingest counted (``metrics.ingested``), the audit record(s) of ``http.audit`` (the same
  ``base_record`` and notes).

It declines (the stack answers, from scratch) whenever anything differs from the plain case:
authentication on (``DICOMSVC_AUTH`` not ``none``), CORS origins configured, a root path, any
query string (``?async``, ``?anonymize``...), a Content-Type other than exactly
``application/json`` or ``application/dicom``, no Content-Length or one over
``requests.MAX_JSON_BYTES`` (JSON) or ``MAX_BODY`` and DICOMSVC_MAX_UPLOAD_BYTES (an
instance), a Transfer-Encoding, Content-Encoding, Expect or Content-Disposition header, a
JSON body that is not an object of ``path`` alone. An instance's body, read whole (at most
``MAX_BODY``), is written to its blob temporary file in one trip to an I/O thread, as the
stack's ``intake._from_body`` spools it, then ingested as the stack would (``"upload"`` its
source). The answer goes through the stack's gzip responder (``compression``). A body it has read
is handed to the stack as it came (``_replay``). After the worker's trip it answers only an
instance ingested (201/200); a path refused, a folder or a failed ingest goes to the stack
(whose ``Service.ingest_one`` of the same item gives that outcome again, ``Service.settled``:
a file that brings its worker down costs one worker), which answers and counts the error --
nothing was stored.
"""

import contextlib
import json
import logging
import secrets
import time
from pathlib import Path

from starlette.responses import JSONResponse

from .. import audit, logs, paths
from ..identity import ANONYMOUS
from ..options import Options
from ..results import Ingested
from ..storage import spool
from .audit import _records, base_record
from .compression import _Responder, accepts_gzip
from .hotreads import observed
from .intake import single
from .requestid import request_id
from .requests import MAX_JSON_BYTES

DICOM = "/dicom"
_SETTLED = "dicomsvc.route"  # routing.settled's scope key: the observers' route template
_DECLINE = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"content-disposition"})
MAX_BODY = 8 << 20  # bytes of an application/dicom body read whole here; a larger one is the stack's (streamed)
JSON_TYPE, DICOM_TYPE = b"application/json", b"application/dicom"
_MAX_LENGTH = {JSON_TYPE: MAX_JSON_BYTES, DICOM_TYPE: MAX_BODY}


class HotPost:
    """Pure ASGI middleware, right after ``HotReads`` in the app's list (``app.create_app``)."""

    def __init__(self, app, config) -> None:
        self.app = app
        self.enabled = config.auth == "none" and not config.cors_origins
        self.access = logging.getLogger("dicomsvc.access")  # accesslog.AccessLog's logger

    async def __call__(self, scope, receive, send):
        if not (self.enabled and scope.get("path") == DICOM and scope["type"] == "http" and scope["method"] == "POST"
                and not scope.get("query_string") and not scope.get("root_path")):  # fmt: skip
            return await self.app(scope, receive, send)
        plain = _plain(scope["headers"])
        svc = getattr(getattr(scope["app"], "state", None), "svc", None)
        if plain is None or svc is None or (plain[0] == DICOM_TYPE and plain[1] > svc.config.max_upload_bytes):
            return await self.app(scope, receive, send)
        kind, length, gzip_ok = plain
        start, when = time.perf_counter(), audit.now()
        read, body = await _read(receive, length)
        raw = _plain_path(body) if body is not None and kind == JSON_TYPE else None
        if raw is None and (body is None or kind == JSON_TYPE):
            return await self.app(scope, _replay(read, receive), send)
        notes, rid = audit.begin_request(), request_id(scope)
        logs.begin_request(logs.RequestContext(rid, lambda: DICOM, lambda: ANONYMOUS.user))  # as RequestId, AccessLog
        options = Options.from_request({}, user=ANONYMOUS.owner)
        temp = None if raw is not None else svc.blobs.tmp / f"upload-{secrets.token_hex(12)}.dcm"  # as intake._from_body
        answer = spooled = raised = None
        item = ("path", raw, options) if temp is None else ("file", temp, "upload", options)
        try:  # the stack's _from_path or _from_body, without ?async (declined): one trip to a worker
            if temp is not None:
                await svc.io(_spool, temp, body)
            spooled = True
            answer = await svc.ingest_one(*item)  # a path refused comes back as its error, not raised
        except Exception as exc:  # noqa: BLE001 -- failed (nothing stored): the stack answers and counts it
            answer, raised = exc, True
        finally:  # not ingested (failed, cancelled): the upload's file may be left, its worker dead
            if temp is not None and not isinstance(answer, Ingested):
                await svc.io(svc.blobs.discard, temp)
        if not isinstance(answer, Ingested):  # refused, a folder, failed: the stack's ingest_one of the
            # same item gives the worker's outcome again (no second trip); a spool that failed, the stack retries
            with svc.settled(item, answer, raised) if spooled else contextlib.nullcontext():
                return await self.app(scope, _replay(read, receive), send)
        await self._answer(scope, send, svc, answer, rid, gzip_ok, notes, start, when)

    async def _answer(self, scope, send, svc, ingested: Ingested, rid: str, gzip_ok: bool, notes, start: float,
                      when: str) -> None:  # fmt: skip
        state = scope.setdefault("state", {})
        state["request_id"], state["user"] = rid, ANONYMOUS
        scope[_SETTLED] = (DICOM, {})
        answer = single(ingested)  # notes the instance for the audit trail, counts the ingest
        response = JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)
        code = 500  # as ResponseStatus: until the answer has started

        async def identified(message):  # as RequestId: the id last among the headers
            nonlocal code
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("ascii"))]
                code = message["status"]
            await send(message)

        try:
            if gzip_ok:  # through the stack's gzip responder (a body of 500 bytes or more compressed)
                await _Responder(response, gzip_ok, False)(scope, _no_body, identified)
            else:  # what it adds to a JSON answer not compressed
                await identified({"type": "http.response.start", "status": answer.status,
                                  "headers": [*response.raw_headers, (b"vary", b"Accept-Encoding")]})  # fmt: skip
                await send({"type": "http.response.body", "body": response.body})
        finally:
            observed(self.access, "POST", DICOM, code, start)
            trail = audit.trail(svc)
            if trail is not None:
                trail.add(_records(base_record(scope, when, code), notes))


async def _no_body():
    return {"type": "http.disconnect"}  # the answer reads nothing more


def _plain(headers) -> tuple[bytes, int, bool] | None:
    """The Content-Type, Content-Length of a plain request (exactly application/json or
    application/dicom, nothing that asks for more than a body read as it is) and whether it
    accepts gzip, else None."""
    length = ctype = accept_encoding = None
    for name, value in headers:
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"content-type":
            if ctype is not None:
                return None
            ctype = value
        elif name == b"accept-encoding" and accept_encoding is None:  # the gzip middleware reads the first
            accept_encoding = value.decode("latin-1")
        elif name in _DECLINE:
            return None
    if length is None or length > _MAX_LENGTH.get(ctype, -1) or (ctype == DICOM_TYPE and not length):
        return None
    return ctype, length, accepts_gzip(accept_encoding or "")


async def _read(receive, length: int) -> tuple[list[dict], bytes | None]:
    """The messages read, and the body when it came whole and as long as announced."""
    read, size = [], 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return read, None
        size += len(message.get("body", b""))
        if size > length:
            return read, None
        if not message.get("more_body", False):
            return read, b"".join(m.get("body", b"") for m in read) if size == length else None


def _spool(temp: Path, body: bytes) -> None:
    """An upload's body to its blob temporary file (in an I/O thread), as ``uploads.spool_body``
    writes it for the stack (``storage.spool.create``, unsealed: blob temp space)."""
    with spool.create(temp, None) as out:
        out.write(body)


def _plain_path(body: bytes) -> str | None:
    """The client's path of a body that is ``{"path": "..."}`` and nothing else, else None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.keys() != {"path"} or not isinstance(data["path"], str):
        return None
    try:
        return paths.client_path(data["path"])
    except Exception:  # noqa: BLE001 -- refused: the stack answers why
        return None


def _replay(read: list[dict], receive):
    """``receive`` giving the messages already read again first."""
    pending = list(read)

    async def again():
        return pending.pop(0) if pending else await receive()

    return again
