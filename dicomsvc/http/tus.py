"""Resumable uploads over tus 1.0.0 (https://tus.io/protocols/resumable-upload): core, creation,
termination, expiration and checksum (sha1, sha256), at ``/uploads/``.

- ``OPTIONS /uploads/``: Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm.
- ``POST /uploads/`` with ``Upload-Length`` and ``Upload-Metadata`` (``filename``, and the options
  ``POST /dicom`` takes: ``anonymize``, ``allow_burned_in``, ``async``): ``201`` + ``Location``.
- ``HEAD /uploads/{id}``: ``Upload-Offset`` (what is stored), ``Upload-Length``.
- ``PATCH /uploads/{id}`` (``application/offset+octet-stream``, ``Upload-Offset`` = the server's):
  ``204`` + the new ``Upload-Offset``. The PATCH that completes the upload ingests it and says
  how in ``Upload-Result`` (JSON: ``{"status": 201, "id"}``, ``{"status": 202, "job"}``, batch
  counts, or ``{"status": 4xx, "error", "detail"}`` -- then the PATCH answers that status too).
- ``DELETE /uploads/{id}``: ``204``, the upload and its bytes are gone.
- ``GET /uploads/{id}`` (not tus): JSON ``{id, status, offset, length, expires, result}``.

Every tus request but OPTIONS must carry ``Tus-Resumable: 1.0.0`` (else ``412``); every answer
carries it. An upload belongs to the user who created it: anyone else gets ``404``. Errors are
JSON ``{"error", "detail"}`` (HEAD answers have no body). Nothing from Upload-Metadata (a
filename may be patient data) is logged or quoted in an error.
"""

import asyncio
import base64
import binascii
import json
import re
from datetime import datetime
from email.utils import format_datetime

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .. import resumable
from ..errors import BadRequest, DicomSvcError, TooLarge, UnsupportedMediaType
from ..options import flag
from ..service import Service
from .auth import user_of
from .requests import base_url

VERSION = "1.0.0"
EXTENSIONS = "creation,termination,expiration,checksum"
OFFSET_TYPE = "application/offset+octet-stream"
LOCK_WAIT = 10.0  # seconds a request waits for another one on the same upload (then 423)
HEAD_WAIT = 2.0  # seconds HEAD waits for a PATCH to finish (then the offset recorded so far)
WRITE_SIZE = 1 << 20  # bytes gathered before one write in an I/O thread
MAX_METADATA_PAIRS = 32
KEY = re.compile(r"[\x21-\x7e]{1,64}")  # tus: keys are ASCII, no spaces or commas
DIGITS = re.compile(r"[0-9]{1,19}")  # RFC 9110 §8.6-like: a non-negative integer, no sign


class VersionMismatch(DicomSvcError):
    """No ``Tus-Resumable: 1.0.0`` (tus core: 412 Precondition Failed, with Tus-Version)."""

    status, code = 412, "tus_version"


class RequestTimeout(DicomSvcError):
    status, code = 408, "request_timeout"


def _tus_headers(**more: str) -> dict[str, str]:
    return {"Tus-Resumable": VERSION, "Cache-Control": "no-store"} | more


def _error(request: Request, exc: DicomSvcError, headers: dict[str, str] | None = None) -> Response:
    headers = _tus_headers(**(headers or {}))
    if isinstance(exc, VersionMismatch):
        headers["Tus-Version"] = VERSION
    if request.method == "HEAD":
        return Response(status_code=exc.status, headers=headers)
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


def _http_date(iso: str) -> str:
    """RFC 9110 §5.6.7 (IMF-fixdate), as tus expiration's Upload-Expires wants it."""
    return format_datetime(datetime.fromisoformat(iso), usegmt=True)


def _check_version(request: Request) -> None:
    if request.headers.get("tus-resumable") != VERSION:
        raise VersionMismatch(f"this server speaks tus {VERSION}: send Tus-Resumable: {VERSION}")


def _integer(request: Request, name: str) -> int:
    raw = request.headers.get(name)
    if raw is None:
        raise BadRequest(f"{name} is missing")
    if not DIGITS.fullmatch(raw.strip()):
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(raw.strip())


def parse_metadata(raw: str) -> dict[str, str]:
    """tus ``Upload-Metadata``: comma-separated ``key base64(value)`` pairs (a key alone: an
    empty value); keys unique. Values must be base64 (RFC 4648 §4) of UTF-8 text."""
    found: dict[str, str] = {}
    if not raw.strip():
        return found
    pairs = raw.split(",")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise BadRequest(f"Upload-Metadata holds more than {MAX_METADATA_PAIRS} pairs")
    for number, pair in enumerate(pairs, 1):
        parts = pair.strip().split(" ")
        if not 1 <= len(parts) <= 2 or not KEY.fullmatch(parts[0]):
            raise BadRequest(f"Upload-Metadata pair {number} is not 'key base64value'")
        key = parts[0]
        if key in found:
            raise BadRequest(f"Upload-Metadata pair {number} repeats a key")
        try:
            value = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) == 2 else ""
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            raise BadRequest(f"Upload-Metadata pair {number}: the value is not base64 of UTF-8 text") from None
        found[key] = value
    return found


def _options(metadata: dict[str, str]) -> dict:
    """What the upload is called and how it is to be ingested, as ``Options.from_request``
    reads the same names from ``POST /dicom``'s query string (``dicomsvc.options.flag``)."""
    name = metadata.get("filename") or metadata.get("name") or ""
    return {
        "filename": name[:1024],
        "anonymize": flag(metadata.get("anonymize"), "anonymize"),
        "allow_burned_in": flag(metadata.get("allow_burned_in"), "allow_burned_in"),
        "async": flag(metadata.get("async"), "async"),
    }


def _svc(request: Request) -> Service:
    return request.app.state.svc


# OPTIONS /uploads/ ---------------------------------------------------------------------------


async def options(request: Request) -> Response:
    cfg = _svc(request).config
    headers = {
        "Tus-Resumable": VERSION,
        "Tus-Version": VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(cfg.tus_max_size),
        "Tus-Checksum-Algorithm": ",".join(resumable.CHECKSUMS),
    }
    return Response(status_code=204, headers=headers)


# POST /uploads/ ------------------------------------------------------------------------------


async def create(request: Request) -> Response:
    try:
        _check_version(request)
        svc = _svc(request)
        if "upload-defer-length" in request.headers:
            raise BadRequest("Upload-Defer-Length is not supported: send Upload-Length")
        length = _integer(request, "upload-length")
        if length > svc.config.tus_max_size:
            raise TooLarge(f"Upload-Length {length} is over Tus-Max-Size {svc.config.tus_max_size}")
        if length == 0:
            raise BadRequest("Upload-Length is 0: an empty file is neither a DICOM file nor a ZIP")
        if request.headers.get("content-length", "0").strip() not in ("", "0"):
            raise BadRequest("creation-with-upload is not supported: send the bytes with PATCH")
        metadata = parse_metadata(request.headers.get("upload-metadata", ""))
        upload = await resumable.create(svc, user_of(request), length, _options(metadata))
    except DicomSvcError as exc:
        return _error(request, exc)
    location = f"{base_url(request)}/uploads/{upload.id}"
    headers = _tus_headers(Location=location, **{"Upload-Expires": _http_date(upload.expires_at)})
    return Response(status_code=201, headers=headers)


# HEAD and GET /uploads/{id} ------------------------------------------------------------------


async def status(request: Request) -> Response:
    """HEAD: the tus offset. GET: the upload as JSON, its ingest's outcome included."""
    upload_id = request.path_params["id"]
    try:
        if request.method == "HEAD":
            _check_version(request)
        svc = _svc(request)
        upload = await resumable.find(svc, upload_id, user_of(request))
        if request.method == "HEAD" and upload.status == "receiving":
            try:  # a PATCH cut short may still be recording what it stored: answer after it
                async with resumable.locked(upload_id, HEAD_WAIT):
                    upload = await resumable.find(svc, upload_id, user_of(request))
            except resumable.Locked:
                pass  # a PATCH that is still sending: its last recorded offset
    except DicomSvcError as exc:
        return _error(request, exc)
    if request.method == "HEAD":
        return Response(status_code=200, headers=_upload_headers(request, upload))
    return JSONResponse(_public(request, upload), headers={"Cache-Control": "no-store"})


def _public(request: Request, upload: resumable.Upload) -> dict:
    return {
        "id": upload.id,
        "status": upload.status,
        "offset": upload.received,
        "length": upload.length,
        "expires": upload.expires_at,
        "result": _result(request, upload.result),
    }


def _result(request: Request, result: dict | None) -> dict | None:
    if result and "job" in result:
        return result | {"status_url": f"{base_url(request)}/jobs/{result['job']}"}
    return result


def _summary(request: Request, result: dict) -> str:
    """``Upload-Result``: the outcome in short (a batch's per-file results are at GET)."""
    short = {k: v for k, v in _result(request, result).items() if k not in ("results", "warnings")}
    if "warnings" in result:
        short["warnings"] = len(result["warnings"])
    return json.dumps(short, separators=(",", ":"))  # ASCII: \u escapes


def _upload_headers(request: Request, upload: resumable.Upload) -> dict[str, str]:
    headers = {
        "Upload-Offset": str(upload.received),
        "Upload-Length": str(upload.length),
        "Upload-Expires": _http_date(upload.expires_at),
    }
    if upload.result is not None:
        headers["Upload-Result"] = _summary(request, upload.result)
    return _tus_headers(**headers)


# PATCH /uploads/{id} -------------------------------------------------------------------------


def _checksum(request: Request) -> tuple[str, bytes] | None:
    raw = request.headers.get("upload-checksum")
    if raw is None:
        return None
    parts = raw.strip().split(" ")
    if len(parts) != 2 or parts[0] not in resumable.CHECKSUMS:
        raise BadRequest(f"Upload-Checksum must be '<algorithm> <base64>' with one of {', '.join(resumable.CHECKSUMS)}")
    try:
        return parts[0], base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise BadRequest("Upload-Checksum: the checksum is not base64") from None


async def append(request: Request) -> Response:
    upload_id = request.path_params["id"]
    svc = _svc(request)
    try:
        _check_version(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != OFFSET_TYPE:
            raise UnsupportedMediaType(f"PATCH needs Content-Type: {OFFSET_TYPE}")
        offset = _integer(request, "upload-offset")
        checksum = _checksum(request)
        await resumable.find(svc, upload_id, user_of(request))  # 404 before waiting for a lock
        async with resumable.locked(upload_id, LOCK_WAIT):
            upload = await resumable.find(svc, upload_id, user_of(request))
            if upload.status != "receiving":
                return await _again(request, svc, upload, offset)
            if offset != upload.received:
                raise OffsetMismatch(upload.received)
            remaining = upload.length - offset
            declared = request.headers.get("content-length", "").strip()
            if declared.isdigit() and int(declared) > remaining:
                raise TooLarge(f"the chunk of {declared} bytes runs past Upload-Length ({remaining} bytes remain)")
            upload = await _receive(request, svc, upload, remaining, checksum)
            if upload.received == upload.length:
                upload = await resumable.complete(svc, upload)
                return _completed(request, upload)
    except DicomSvcError as exc:
        return _error(request, exc)
    return Response(status_code=204, headers=_upload_headers(request, upload))


def OffsetMismatch(server_offset: int) -> resumable.OffsetMismatch:  # noqa: N802 - an error factory
    return resumable.OffsetMismatch(f"Upload-Offset is not this upload's offset ({server_offset}): HEAD tells it")


async def _again(request: Request, svc: Service, upload: resumable.Upload, offset: int) -> Response:
    """A PATCH to an upload already received in full: the ingest's outcome again (a client
    retrying the last PATCH whose answer it lost), or a new try of an ingest a server-side
    error had postponed."""
    if offset != upload.length:
        raise OffsetMismatch(upload.received)
    if upload.status == "ingesting":
        upload = await resumable.complete(svc, upload)
    return _completed(request, upload)


def _completed(request: Request, upload: resumable.Upload) -> Response:
    headers = _upload_headers(request, upload)
    result = upload.result or {}
    if result.get("status", 500) < 400:
        return Response(status_code=204, headers=headers)
    body = {"error": result.get("error", "internal"), "detail": result.get("detail", "")}
    return JSONResponse(body, status_code=result.get("status", 500), headers=headers)


async def _receive(
    request: Request, svc: Service, upload: resumable.Upload, remaining: int, checksum: tuple[str, bytes] | None
) -> resumable.Upload:
    """Write the body at the upload's offset; then record what is durably stored.

    A connection that breaks (or a body that pauses past DICOMSVC_TUS_IDLE_TIMEOUT) keeps
    what arrived -- unless the chunk carries a checksum, which a part cannot be held to."""
    path = resumable.data_path(svc, upload.id)
    writer = await svc.io(resumable.Writer, path, upload.received, checksum[0] if checksum else None, svc.blobs.keyring)
    broken: DicomSvcError | None = None
    overflow = False
    try:
        pending = bytearray()
        async for piece in _pieces(request, svc.config.tus_idle_timeout):
            pending += piece
            if writer.written + len(pending) > remaining:
                del pending[remaining - writer.written :]
                overflow = True
            if len(pending) >= WRITE_SIZE or overflow:
                await svc.io(writer.write, bytes(pending))
                pending.clear()
            if overflow:
                break
        await svc.io(writer.write, bytes(pending))
    except (ClientDisconnect, RequestTimeout) as exc:
        broken = exc if isinstance(exc, RequestTimeout) else BadRequest("the connection broke mid-chunk")
        if pending:
            await svc.io(writer.write, bytes(pending))
    finally:
        matches = checksum is None or (broken is None and writer.digest.digest() == checksum[1])
        keep = writer.written if matches and not (checksum and overflow) else 0
        await svc.io(writer.close, keep)
    if keep:
        upload = await resumable.advance(svc, upload, upload.received + keep)
    if not matches:
        if broken is not None:
            raise broken
        raise resumable.ChecksumMismatch("Upload-Checksum does not match the chunk: it was not stored")
    if overflow:
        raise TooLarge(f"the chunk runs past Upload-Length; the first {keep} bytes were stored")
    if broken is not None:
        raise broken
    return upload


async def _pieces(request: Request, idle_timeout: float):
    """The body as it arrives (ClientDisconnect when the client goes away, RequestTimeout when
    nothing arrives for ``idle_timeout`` seconds)."""
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), idle_timeout)
        except TimeoutError:
            raise RequestTimeout(f"no data for {idle_timeout:g} s (DICOMSVC_TUS_IDLE_TIMEOUT): what arrived is kept") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


# DELETE /uploads/{id} ------------------------------------------------------------------------


async def terminate(request: Request) -> Response:
    upload_id = request.path_params["id"]
    try:
        _check_version(request)
        svc = _svc(request)
        await resumable.find(svc, upload_id, user_of(request))
        async with resumable.locked(upload_id, LOCK_WAIT):
            upload = await resumable.find(svc, upload_id, user_of(request))
            await resumable.remove(svc, upload)
    except DicomSvcError as exc:
        return _error(request, exc)
    return Response(status_code=204, headers=_tus_headers())


# The API description (merged into dicomsvc/http/openapi.py's) ---------------------------------

_ID = {"name": "id", "in": "path", "required": True, "description": "the upload's id (32 hex characters)",
       "schema": {"type": "string"}}  # fmt: skip


def _op(summary: str, answers: dict[str, str], params: list | None = None) -> dict:
    responses = {
        status: {"description": text} | (
            {"content": {"application/json": {"schema": {"type": "object"}}}} if status[0] in "45" or status == "200" else {}
        )
        for status, text in answers.items()
    }  # fmt: skip
    return {"summary": summary, "parameters": params or [], "responses": responses}


OPENAPI = {
    "/uploads/": {
        "options": _op("tus: the protocol's versions, extensions, Tus-Max-Size and checksums", {"204": "capabilities"}),
        "post": _op(
            "tus creation: Upload-Length, Upload-Metadata (filename, anonymize, allow_burned_in, async)",
            {"201": "created: Location", "400": "bad header", "412": "no Tus-Resumable: 1.0.0",
             "413": "over Tus-Max-Size", "429": "too many incomplete uploads"},
        ),
    },
    "/uploads/{id}": {
        "get": _op("The upload: status, offset, length, expires, result", {"200": "the upload", "404": "no such upload"}, [_ID]),
        "patch": _op(
            "tus: append at Upload-Offset; the last chunk ingests the file (Upload-Result)",
            {"204": "stored: Upload-Offset", "409": "offset mismatch", "412": "no Tus-Resumable: 1.0.0",
             "415": "not application/offset+octet-stream", "422": "the completed file is not DICOM",
             "423": "another request writes it", "460": "checksum mismatch", "404": "no such upload"},
            [_ID],
        ),
        "delete": _op("tus termination", {"204": "removed", "404": "no such upload"}, [_ID]),
    },
}  # fmt: skip
