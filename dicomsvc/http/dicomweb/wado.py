"""WADO-RS (PS3.18 §10.4): studies, series and instances as multipart/related DICOM,
frames, bulk data, and rendered images and thumbnails.

Retrieve (PS3.18 §10.4.1.1.1): ``multipart/related; type="application/dicom"``, one
part per instance (the newest stored version of each SOP Instance UID), in series
number then instance number order. Each part is streamed from its file 1 MiB at a
time; an instance that has to be decompressed (Explicit VR Little Endian asked of
compressed data) is re-encoded by a worker into a temporary file a frame at a time
(``retrieve.write_explicit_le``) — the next one while the current one is sent — then
streamed and removed. So a 2 GB study never sits in memory. The first instance is
made ready before the answer starts, so a failure there is a JSON error; a later one
that cannot be made (corrupt pixel data found only while decoding) is left out of
the stream and logged by id. Transfer syntax negotiation: ``multipart.py``.

Frames (PS3.18 §10.4.1.1.5, ``.../frames/1,3,5``): one part per frame asked, in the
order asked; uncompressed frames are cut from the stored file when it holds native
little-endian data and decoded in a worker otherwise; compressed frames are sent as
stored. A strong ETag names the instance, the frames and the representation (the
multipart boundary is derived from them too, so the bytes are the same each time).

Bulk data (PS3.18 §10.4.1.1.3, ``.../bulk/{path}``, the element path of
``dicomsvc.dicom.dicomjson``): the value as one ``application/octet-stream`` part.
The Pixel Data URI (``.../bulk/7FE00010``) is answered like the frames: all frames
uncompressed as one part (the Pixel Data value in Explicit VR Little Endian), or,
when the client accepts the stored compressed syntax, one part per frame.

Rendered (PS3.18 §10.4.1.1.6, §8.3.5.1) and thumbnails (§10.4.1.1.4, §10.4.3.3.4) at
study, series, instance and frame level: JPEG unless Accept (or the ``accept`` query
parameter, §8.3.3.1) prefers PNG; ``viewport=vw,vh`` fits the image in that box
(aspect kept, never more than DICOMSVC_RENDER_MAX_SIZE); ``window=center,width[,function]``
with function ``linear``, ``linear-exact`` or ``sigmoid``; ``quality`` 1..100. A study
or series is shown by one representative image (not one part per instance): the first
frame of the middle instance, by Instance Number, of the series (of a study: of its
first series by Series Number) — what a viewer's thumbnail strip wants, and cheap. A
thumbnail is the same rendering fitted in DICOMSVC_THUMBNAIL_SIZE (default 128) pixels
unless ``viewport`` says otherwise; it carries no annotation, so no patient data.
Renderings use the renderer and cache of ``GET /image`` (``instances.rendering``).
Query parameters this service does not support are ignored (PS3.18 §8.3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ... import tasks
from ...errors import BadRequest, DicomSvcError, NoPixelData, NotAcceptable, NotFound
from ...imaging.params import RenderParams, parse_params
from ...service import Service
from ...storage import instances
from ...storage.blobs import BlobStore
from .. import instances as stored_instances
from ..auth import owner_of
from ..requests import etag_matches
from . import multipart
from .multipart import EXPLICIT_LE, IMPLICIT_LE, MediaRange, Multipart, parse_accept

log = logging.getLogger("dicomsvc")
T = TypeVar("T")
CHUNK = 1 << 20
FRAMES_RE = re.compile(r"^[0-9]{1,9}(,[0-9]{1,9})*$")  # 1-based frame numbers
PIXELS_RE = re.compile(r"^[0-9]{1,9}$")
DECODE_BATCH_BYTES = 16 << 20  # decoded frames handed back by one worker call, at most (about)
PIXEL_PATHS = {"7FE00010", "7FE00009", "7FE00008"}  # Pixel Data, Double Float, Float Pixel Data


def _accept(request: Request) -> list[MediaRange]:
    """The acceptable media types: the ``accept`` query parameter (PS3.18 §8.3.3.1), which
    takes precedence, or the Accept header."""
    return parse_accept(request.query_params.get("accept") or request.headers.get("accept"))


# Retrieve study, series, instance ------------------------------------------------------------


async def retrieve_study(request: Request) -> Response:
    return await _retrieve(request, request.path_params["study"])


async def retrieve_series(request: Request) -> Response:
    return await _retrieve(request, request.path_params["study"], request.path_params["series"])


async def retrieve_instance(request: Request) -> Response:
    p = request.path_params
    return await _retrieve(request, p["study"], p["series"], p["sop"])


@dataclass
class _Plan:
    row: dict
    syntax: str  # the transfer syntax sent
    transcode: bool  # re-encoded (and decompressed) by a worker


@dataclass
class _Ready:
    """An instance's file, open (so a delete meanwhile does not cut its part short)."""

    path: Path
    file: BinaryIO
    size: int
    temp: bool  # a temporary file, removed once sent

    def close(self) -> None:
        self.file.close()
        if self.temp:
            self.path.unlink(missing_ok=True)


async def _retrieve(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    svc: Service = request.app.state.svc
    owner = owner_of(request)  # DICOMSVC_VISIBILITY=own: others' instances are not there (404)
    if sop is not None:
        rows = [await _instance(svc, study, series, sop, owner)]
    else:
        rows = await instances.instances_by_uid(svc.db, study, series, owner)
        if not rows:
            raise NotFound("no such series" if series is not None else "no such study")
    ranges = _accept(request)
    plans, single = [], False
    for row in rows:
        stored = row["transfer_syntax_uid"] or IMPLICIT_LE
        decodable = await _decodable(svc, stored) if row["has_pixels"] else True
        chosen = multipart.instance_syntax(ranges, stored, decodable, single_part=sop is not None)
        if chosen is None:
            raise NotAcceptable(
                "none of the media types in Accept can be produced for this resource: it is served as "
                'multipart/related; type="application/dicom" with transfer-syntax=* (as stored) or '
                f"{EXPLICIT_LE} (Explicit VR Little Endian){_stored_note(stored, decodable)}"
            )
        syntax, is_multipart = chosen
        single = not is_multipart
        plans.append(_Plan(row, syntax, transcode=syntax != stored))
    first = await _prepare(svc, plans[0])  # before the answer starts: its errors are JSON errors
    if single:
        return StreamingResponse(
            _file_chunks(svc, first),
            media_type=f"application/dicom; transfer-syntax={plans[0].syntax}",
            headers={"Content-Length": str(first.size)},
        )
    writer = Multipart(multipart.DICOM)
    return StreamingResponse(_instances_body(svc, plans, first, writer), headers={"Content-Type": writer.content_type})


def _stored_note(stored: str, decodable: bool) -> str:
    return "" if decodable else f"; its pixel data ({stored}) cannot be decoded here"


DECODABLE_KEPT = 64  # transfer syntaxes whose answer is kept (there are ~40 known ones)
_decodable_syntaxes: dict[str, bool] = {}


async def _decodable(svc: Service, stored: str) -> bool:
    """Whether pixel data in transfer syntax ``stored`` can be decoded here (PS3.5 §10: native
    syntaxes always; an encapsulated one when pydicom has a decoder plugin for it): asked of a
    worker (``retrieve.decodable``; the server never imports pydicom: ``dicomsvc.tasks``) once
    per syntax, as the server and its workers have the same plugins installed."""
    if stored in multipart.NATIVE_SYNTAXES:
        return True
    found = _decodable_syntaxes.get(stored)
    if found is None:
        found = await svc.cpu(tasks.decodable, stored)
        if len(_decodable_syntaxes) < DECODABLE_KEPT:
            _decodable_syntaxes[stored] = found
    return found


async def _instance(svc: Service, study: str, series: str, sop: str, owner: str | None) -> dict:
    row = await instances.instance_by_uid(svc.db, study, series, sop, owner)
    if row is None:
        raise NotFound("no such instance")
    return row


async def _prepare(svc: Service, plan: _Plan) -> _Ready:
    """The file to send for ``plan``, open: the stored one, or a temporary re-encoded one.

    Cancelled (the client went away) while a worker or a thread still works for it, what
    they make is removed when they are done; clean-ups here never await (an await in a
    cancelled request is cancelled at once)."""
    if plan.transcode:
        try:
            temp = await _finished(svc.cpu(tasks.write_explicit_le, svc.config, plan.row["dcm_blob"]), _unlink)
        except FileNotFoundError:  # deleted since it was looked up
            raise NotFound("no such instance") from None
        try:
            return await _finished(svc.io(_open, temp, True), _Ready.close)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    try:
        return await _finished(svc.io(_open_stored, svc.blobs, svc.blobs.path(plan.row["dcm_blob"])), _Ready.close)
    except FileNotFoundError:  # deleted since it was looked up
        raise NotFound("no such instance") from None


def _open(path: Path, temp: bool) -> _Ready:
    src = open(path, "rb")
    return _Ready(path, src, os.fstat(src.fileno()).st_size, temp)


def _open_stored(blobs: BlobStore, path: Path) -> _Ready:
    """A stored instance as it was stored (decrypted as it is read, when encrypted at rest)."""
    src = blobs.open_file(path)
    size = getattr(src, "size", None)  # an encrypted blob's reader: its plaintext size
    return _Ready(path, src, size if isinstance(size, int) else os.fstat(src.fileno()).st_size, False)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _finished(work: Awaitable[T], discard: Callable[[T], None]) -> T:
    """``await work``; if the caller is cancelled meanwhile, ``discard`` its result once it is made."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is not None or discard(f.result()))
        raise


async def _file_chunks(svc: Service, ready: _Ready) -> AsyncIterator[bytes]:
    try:
        while chunk := await svc.io(ready.file.read, CHUNK):
            yield chunk
    finally:
        ready.close()


async def _instances_body(svc: Service, plans: list[_Plan], first: _Ready, writer: Multipart) -> AsyncIterator[bytes]:
    """The multipart body: each instance's part streamed while the next one is prepared."""
    upcoming: asyncio.Task | None = None
    held: list[_Ready] = [first]  # open files (and temporary ones) this body closes
    try:
        for i, plan in enumerate(plans):
            ready: _Ready | None = first
            if i > 0:
                ready = await _next(upcoming, plan)
                upcoming = None
                if ready is not None:
                    held.append(ready)
            if i + 1 < len(plans):
                upcoming = asyncio.ensure_future(_prepare(svc, plans[i + 1]))
            if ready is None:
                continue
            yield writer.head(f"application/dicom; transfer-syntax={plan.syntax}", ready.size)
            while chunk := await svc.io(ready.file.read, CHUNK):
                yield chunk
            held.remove(ready)
            ready.close()
        yield writer.tail()
    finally:
        for ready in held:
            ready.close()
        if upcoming is not None:
            upcoming.cancel()
            upcoming.add_done_callback(_discard_ready)


async def _next(task: asyncio.Task, plan: _Plan) -> _Ready | None:
    """The prepared next instance; None (logged) when it could not be made."""
    try:
        return await task
    except DicomSvcError as exc:  # e.g. pixel data found corrupt while decoding; no values in the log
        log.warning("WADO-RS: instance %s left out of the answer: %s", plan.row["id"], exc.code)
        return None


def _discard_ready(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


# Frames and bulk data ------------------------------------------------------------------------


async def retrieve_frames(request: Request) -> Response:
    p = request.path_params
    numbers = _frame_numbers(p["frames"])
    svc: Service = request.app.state.svc
    row = await _instance(svc, p["study"], p["series"], p["sop"], owner_of(request))
    _check_frames(row, numbers)
    return await _pixel_answer(request, svc, row, numbers, key=",".join(map(str, numbers)), one_native_part=False)


def _frame_numbers(raw: str) -> list[int]:
    """``1`` or ``1,3,5``: 1-based frame numbers (PS3.18 §10.4.1.1.5), in the order asked."""
    if not FRAMES_RE.match(raw) or len(raw) > 10_000:
        raise BadRequest(
            "frames must be a comma-separated list of frame numbers from 1 (at most 9 digits each), e.g. 1 or 1,3,5"
        )
    numbers = [int(n) for n in raw.split(",")]
    if min(numbers) < 1:
        raise BadRequest("frame numbers start at 1")
    return numbers


def _check_frames(row: dict, numbers: list[int]) -> int:
    if not row["has_pixels"]:
        raise NoPixelData("this instance has no pixel data")
    count = row["frames"] or 1
    missing = [n for n in numbers if n > count]
    if missing:
        plural = "frame" if count == 1 else "frames"
        raise NotFound(f"there is no frame {missing[0]}: this instance has {count} {plural}")
    return count


async def retrieve_bulk(request: Request) -> Response:
    p = request.path_params
    svc: Service = request.app.state.svc
    row = await _instance(svc, p["study"], p["series"], p["sop"], owner_of(request))
    element = p["path"].strip("/")
    ranges = _accept(request)
    if element.upper() in PIXEL_PATHS and row["has_pixels"]:
        count = row["frames"] or 1
        return await _pixel_answer(request, svc, row, list(range(1, count + 1)), key="bulk", one_native_part=True)
    is_multipart = _bulk_multipart(ranges)
    size, chunks = await svc.io(tasks.bulk, svc.blobs.stored(row["dcm_blob"]), element)
    writer = Multipart(multipart.OCTET_STREAM)

    async def body() -> AsyncIterator[bytes]:
        if is_multipart:
            yield writer.head(multipart.OCTET_STREAM, size)
        while (chunk := await svc.io(next, chunks, None)) is not None:
            yield chunk
        if is_multipart:
            yield writer.tail()

    if not is_multipart:
        return StreamingResponse(body(), media_type=multipart.OCTET_STREAM, headers={"Content-Length": str(size)})
    return StreamingResponse(body(), headers={"Content-Type": writer.content_type})


def _bulk_multipart(ranges: list[MediaRange]) -> bool:
    """Bulk data (PS3.18 Table 10.4.4-1): multipart/related; type="application/octet-stream"
    (or any type), or a bare application/octet-stream or */* (single part); else 406."""
    for r in ranges:
        if r.multipart and (r.part_type is None or multipart._media_matches(r.part_type, multipart.OCTET_STREAM)):
            return True
        if r.media in (multipart.OCTET_STREAM, "application/*", "*/*"):
            return False
    raise NotAcceptable('bulk data is served as multipart/related; type="application/octet-stream" or application/octet-stream')


async def _pixel_answer(
    request: Request, svc: Service, row: dict, numbers: list[int], key: str, one_native_part: bool
) -> Response:
    """Frames ``numbers`` (1-based) as negotiated: one part each, or, for the Pixel Data bulk
    URI answered uncompressed (``one_native_part``), all of them as one part."""
    stored = row["transfer_syntax_uid"] or IMPLICIT_LE
    ranges = _accept(request)
    single_ok = len(numbers) == 1 or one_native_part
    decodable = await _decodable(svc, stored)
    answer = multipart.frames_representation(ranges, stored, decodable, single_part=single_ok, bulk=one_native_part)
    if answer is not None and not answer.multipart and not answer.native and len(numbers) > 1:
        answer = None  # several compressed frames need several parts
    if answer is None:
        raise NotAcceptable(
            'frames are served as multipart/related; type="application/octet-stream" (uncompressed, '
            f"transfer-syntax={EXPLICIT_LE}, or transfer-syntax=* for the stored frames), or as the stored "
            f"syntax's media type{_stored_note(stored, decodable)}"
        )
    tag = hashlib.sha256(f"{row['id']}|{key}|{answer.content_type_key}".encode()).hexdigest()[:40]
    headers = {"ETag": f'"{tag}"', "Vary": "Accept"}
    if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    frames = (await _frame_reader(svc, row, answer.native, [n - 1 for n in numbers])).__aiter__()
    try:
        first = await frames.__anext__()  # before the answer starts: its errors are JSON errors
    except FileNotFoundError:  # deleted since it was looked up
        raise NotFound("no such instance") from None
    one_part = one_native_part and answer.native
    if not answer.multipart:
        length = len(first) * len(numbers) if one_part else len(first)
        return StreamingResponse(
            _chain(first, frames), media_type=answer.part_content_type, headers={**headers, "Content-Length": str(length)}
        )
    writer = Multipart(answer.part_type, seed=tag)

    async def body() -> AsyncIterator[bytes]:
        if one_part:
            yield writer.head(answer.part_content_type, len(first) * len(numbers))
            async for data in _chain(first, frames):
                yield data
        else:
            async for data in _chain(first, frames):
                yield writer.head(answer.part_content_type, len(data))
                yield data
        yield writer.tail()

    return StreamingResponse(body(), headers={**headers, "Content-Type": writer.content_type})


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for data in rest:
        yield data


async def _frame_reader(svc: Service, row: dict, native: bool, indexes: list[int]) -> AsyncIterator[bytes]:
    """The frames' bytes, one at a time: cut from the file (native little-endian data, or the
    stored compressed frames) in an I/O thread, or decoded in a worker, a batch per call."""
    stored = row["transfer_syntax_uid"] or IMPLICIT_LE
    source = None
    if not native or stored in (IMPLICIT_LE, EXPLICIT_LE, multipart.DEFLATED_LE):
        try:
            source = await svc.io(tasks.frame_source, svc.blobs.stored(row["dcm_blob"]))
        except FileNotFoundError:  # deleted since it was looked up
            raise NotFound("no such instance") from None
        if native and not source.raw_native:
            source = None
    if source is not None:
        read = source.native if native else source.compressed
        return _read_frames(svc, read, indexes)
    return _decode_frames(svc, row, indexes)


async def _read_frames(svc: Service, read: Callable[[int], bytes], indexes: list[int]) -> AsyncIterator[bytes]:
    for index in indexes:
        yield await svc.io(read, index)


async def _decode_frames(svc: Service, row: dict, indexes: list[int]) -> AsyncIterator[bytes]:
    samples = 3 if str(row.get("photometric") or "").upper().startswith(("RGB", "YBR")) else 1
    bits = row.get("bits_allocated") or 16
    estimate = max(1, (row.get("rows") or 1) * (row.get("columns") or 1) * samples * max(bits, 8) // 8)
    batch = max(1, DECODE_BATCH_BYTES // estimate)
    for start in range(0, len(indexes), batch):
        chunk = indexes[start : start + batch]
        for data in await svc.cpu(tasks.decoded_frames, svc.config, row["dcm_blob"], chunk):
            yield data


# Rendered and thumbnails ---------------------------------------------------------------------

VOI_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "linear_exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


async def rendered(request: Request) -> Response:
    return await _rendered(request, thumbnail=False)


async def thumbnail(request: Request) -> Response:
    return await _rendered(request, thumbnail=True)


async def _rendered(request: Request, thumbnail: bool) -> Response:
    svc: Service = request.app.state.svc
    p = request.path_params
    frame = 1
    if "frame" in p:
        numbers = _frame_numbers(p["frame"])
        if len(numbers) != 1:
            raise BadRequest("a rendered frame is one frame number")
        frame = numbers[0]
    owner = owner_of(request)
    if "sop" in p:
        row = await _instance(svc, p["study"], p["series"], p["sop"], owner)
        _check_frames(row, [frame])
    else:
        row = await instances.representative(svc.db, p["study"], p.get("series"), owner)
        if row is None:
            level = "series" if "series" in p else "study"
            raise NotFound(f"no such {level}, or no instance with pixel data in it")
    params = render_params(request.query_params, request.headers.get("accept"), svc.config, frame, thumbnail)
    image = await stored_instances.rendering(svc, row, params, request.headers.get("if-none-match"))
    headers = {"ETag": image.etag, "Vary": "Accept"}
    if image.body is None:
        return Response(status_code=304, headers=headers)
    return Response(image.body, media_type=image.media_type, headers=headers)


def render_params(query, accept: str | None, config, frame: int, thumbnail: bool) -> RenderParams:
    """PS3.18 §8.3.5.1 rendering parameters as the renderer's ``RenderParams``."""
    fmt = _rendered_format(parse_accept(query.get("accept") or accept))
    asked: dict[str, str] = {"frame": str(frame), "format": fmt}
    viewport = query.get("viewport")
    if viewport is not None:
        width, height = _viewport(viewport)
        if width is not None:
            asked["width"] = str(width)
        if height is not None:
            asked["height"] = str(height)
    elif thumbnail:
        asked["width"] = asked["height"] = str(config.thumbnail_size)
    function = None
    window = query.get("window")
    if window is not None and not thumbnail:
        asked["window"], function = _window(window)
    if query.get("quality") is not None:
        asked["quality"] = query["quality"]
    params = parse_params(asked, None, config.render_max_size)
    if function is not None or thumbnail:
        params = dataclasses.replace(params, function=function, thumbnail=thumbnail)
    return params


def _rendered_format(ranges: list[MediaRange]) -> str:
    """JPEG (PS3.18 Table 10.4.4-1 default for rendered images and thumbnails) or PNG."""
    for r in ranges:
        if r.media == "image/jpeg":
            return "jpeg"
        if r.media == "image/png":
            return "png"
        if r.media in ("*/*", "image/*"):
            return "jpeg"
    raise NotAcceptable("rendered images and thumbnails are image/jpeg (the default) or image/png")


def _viewport(raw: str) -> tuple[int | None, int | None]:
    """``viewport=vw,vh`` (PS3.18 §8.3.5.1.2); either may be left empty. The source region
    form (vw,vh,sx,sy,sw,sh) is refused: cropping is not supported."""
    parts = raw.split(",")
    if len(parts) == 6:
        raise BadRequest("viewport with a source region (vw,vh,sx,sy,sw,sh) is not supported; give vw,vh")
    if len(parts) != 2:
        raise BadRequest("viewport must be vw,vh (pixels)")
    sizes = []
    for part in parts:
        part = part.strip()
        if part == "":
            sizes.append(None)
        elif PIXELS_RE.match(part) and int(part) > 0:
            sizes.append(int(part))
        else:
            raise BadRequest("viewport sizes must be positive whole numbers of pixels")
    if sizes == [None, None]:
        raise BadRequest("viewport must give a width, a height or both")
    return sizes[0], sizes[1]


def _window(raw: str) -> tuple[str, str | None]:
    """``window=center,width,function`` (PS3.18 §8.3.5.1.3): ``"center,width"`` for the
    renderer and the VOI LUT Function; the function may be left out (the file's is kept)."""
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) not in (2, 3):
        raise BadRequest("window must be center,width,function (function: linear, linear-exact or sigmoid)")
    function = None
    if len(parts) == 3:
        function = VOI_FUNCTIONS.get(parts[2].lower())
        if function is None:
            raise BadRequest("the window function must be linear, linear-exact or sigmoid")
    return f"{parts[0]},{parts[1]}", function
