"""Stored instances: the PNG, the tag rows, the DICOM file, an anonymized copy."""

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
from starlette.requests import Request

from .. import metrics, tasks
from ..errors import BadRequest, Forbidden, NoPixelData, NotFound, UnsupportedTransferSyntax
from ..imaging.params import RenderParams, cache_key, is_default, parse_params
from ..options import Options, flag
from ..results import Ingested, deleted_is_404
from ..service import Service
from ..storage import instances
from ..storage.blobs import BlobStore, Sealed, read_if_cached
from .auth import identity, owner_of
from .ranges import RangedFileResponse
from .readcache import ReadCache
from .requests import etag_matches, read_json_object

ID_RE = re.compile(r"[0-9A-Za-z]{22}")  # shortuuid.uuid()


@dataclass(frozen=True)
class Image:
    etag: str
    body: bytes | None  # None: the client's copy (If-None-Match) is current
    media_type: str = "image/png"


def check_id(instance_id: str | None) -> str:
    if not instance_id:
        raise BadRequest("the 'id' query parameter is required")
    if not ID_RE.fullmatch(instance_id):
        raise NotFound("no instance with that id")
    return instance_id


async def _instance(svc: Service, instance_id: str | None, owner: str | None = None) -> dict:
    """The instance's row; ``owner`` (DICOMSVC_VISIBILITY=own): 404 unless that user stored it."""
    record = await instances.get_instance(svc.db, check_id(instance_id), owner)
    if record is None:
        raise NotFound("no instance with that id")
    return record


async def image(
    svc: Service,
    query: Mapping[str, str],
    accept: str | None = None,
    if_none_match: str | None = None,
    owner: str | None = None,
    cache: ReadCache | None = None,
) -> Image:
    """``GET /image``: frame 1 as rendered at ingest (no decoding), or another rendering.

    Other renderings (frame, window, size, JPEG) are made from the stored DICOM on
    first request, decoding only the frame asked for, and kept in blob storage.
    The stored PNG is kept in ``cache`` once read (``readcache``: it never changes).
    """
    params = parse_params(
        {k: v for k, v in query.items() if k != "id"}, accept, svc.config.render_max_size
    )
    generation = cache.generation if cache is not None else None  # before the lookup: see readcache
    record = await instances.get_rendering_row(svc.db, check_id(query.get("id")), owner)
    if record is None:
        raise NotFound("no instance with that id")
    return await rendering(svc, record, params, if_none_match, cache, generation)


async def rendering(
    svc: Service,
    record: dict,
    params: RenderParams,
    if_none_match: str | None,
    cache: ReadCache | None = None,
    generation: int | None = None,
) -> Image:
    """The rendering ``params`` of a stored instance (its row, ``instances.RENDERING_COLUMNS``
    at least): the PNG stored at ingest when that is what is asked (from ``cache`` when it
    holds it), else from the rendering cache, made once on a miss (in a worker)."""
    if not record["has_pixels"]:
        raise NoPixelData("this instance has no pixel data")
    if is_default(params):
        if record["png_blob"] is None:
            raise UnsupportedTransferSyntax(record["render_error"] or "pixel data could not be rendered")
        etag = f'"{record["id"]}.png"'  # stored renderings never change
        if etag_matches(if_none_match, etag):
            return Image(etag, None)
        key = ("png", record["id"])
        body = cache.get(key) if cache is not None else None
        if body is None:
            stored = svc.blobs.stored(record["png_blob"])  # a Sealed one is decrypted in the I/O thread
            if isinstance(stored, Path):  # straight from the page cache when it is there (never waits for the disk)
                with deleted_is_404():
                    body = read_if_cached(stored)
            if body is None:
                # one trip to an I/O thread (a FileResponse makes several): the file may not be in the page cache
                body = await svc.io(_read_stored, stored)
            if cache is not None:
                cache.put(key, body, generation)
        return Image(etag, body)
    key = cache_key(params)
    etag = f'"{record["id"]}.{key}"'
    if etag_matches(if_none_match, etag):
        return Image(etag, None, params.media_type)
    cached = svc.blobs.renderings(record["id"]) / f"{key}.{params.format}"
    body = await svc.io(_read_if_there, svc.blobs.reader(cached))
    metrics.rendering_cache(hit=body is not None)
    if body is None and params.thumbnail and record["png_blob"] and params.frame == 1 and params.window is None:
        # a thumbnail of frame 1: the display pixels are the PNG's stored at ingest (no parsing,
        # decoding or windowing; half the time for a 512 x 512 CT)
        body = await svc.cpu(tasks.rerender_and_keep, svc.config, record["png_blob"], params, cached)
        await _unless_deleted(svc, record["id"])
    elif body is None:
        body = await svc.cpu(tasks.render_and_keep, svc.config, record["dcm_blob"], params, cached)
        await _unless_deleted(svc, record["id"])
    return Image(etag, body, params.media_type)


async def _unless_deleted(svc: Service, instance_id: str) -> None:
    """After a rendering was kept: if a DELETE committed meanwhile, its removal of the
    renderings folder may have come before the write, so remove it here and answer 404.
    (A DELETE that commits after this check removes the folder itself: it does so after
    its commit, so after this write.) No orphan outlives the request that made it."""
    if await instances.get_instance(svc.db, instance_id) is None:
        await svc.io(svc.blobs.remove_renderings, instance_id)
        raise NotFound("no instance with that id")


def _read_stored(path: "Path | Sealed") -> bytes:
    with deleted_is_404():
        return path.read_bytes()


def _read_if_there(path: "Path | Sealed") -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def tags_json(
    svc: Service, instance_id: str | None, owner: str | None = None, cache: ReadCache | None = None
) -> bytes:
    """``{"uuid": id, "tags": [...]}`` as JSON bytes, the rows serialized by SQLite, kept in
    ``cache`` (they never change for an id; the row is looked up first all the same)."""
    key = ("tags", check_id(instance_id))
    generation = cache.generation if cache is not None else None  # before the lookup: see readcache
    if cache is not None and (body := cache.get(key)) is not None:
        if await instances.instance_exists(svc.db, instance_id, owner):
            return body
        raise NotFound("no instance with that id")
    rows = await instances.get_tags_json(svc.db, instance_id, owner)
    if rows is None:
        raise NotFound("no instance with that id")
    body = b'{"uuid":"%s","tags":%s}' % (instance_id.encode(), rows.encode())
    if cache is not None:
        cache.put(key, body, generation)
    return body


class OpenFileResponse(RangedFileResponse):
    """A ``FileResponse`` of a file already open, served through ``/proc/self/fd/N`` (the
    same inode): a DELETE after the lookup unlinks a name, not the file being sent, so
    the answer is whole (or, had the DELETE come first, a 404), never a connection cut
    after the headers. Ranges (``ranges``: with JSON errors), ETag and Last-Modified work
    as for any FileResponse. The file is closed when the response is done, however it ends.

    An encrypted blob (``dicomsvc.storage.crypt.SealedReader``: no descriptor of its
    plaintext) is served from the reader itself: its plaintext size and the file's times
    make the headers, and each range decrypts only the chunks it covers."""

    def __init__(self, file: BinaryIO, **kwargs):
        self.file = file
        self.sealed = isinstance(getattr(file, "size", None), int)
        if self.sealed:
            super().__init__(file.name, stat_result=file.stat(), **kwargs)
            return
        fd = file.fileno()
        path = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else file.name
        super().__init__(path, stat_result=os.fstat(fd), **kwargs)

    async def __call__(self, scope, receive, send) -> None:
        if self.sealed and "http.response.pathsend" in scope.get("extensions", {}):
            scope = {**scope, "extensions": {k: v for k, v in scope["extensions"].items() if k != "http.response.pathsend"}}
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.file.close()

    @contextlib.asynccontextmanager
    async def _open_file(self):
        """Starlette's FileResponse opens ``path`` here (once per answer); an encrypted blob is
        read through its reader instead (closed in ``__call__``)."""
        if not self.sealed:
            async with super()._open_file() as file:
                yield file
            return
        yield anyio.wrap_file(self.file)


@dataclass(frozen=True)
class StoredFile:
    file: BinaryIO  # open: see OpenFileResponse
    filename: str  # safe for Content-Disposition: the id, never a name from the data


async def dicom_file(svc: Service, instance_id: str, owner: str | None = None) -> StoredFile:
    """``GET /dicom/{id}/file``: the stored DICOM file, as it was stored (opened here)."""
    record = await _instance(svc, instance_id, owner)
    return StoredFile(await svc.io(_open_stored, svc.blobs, svc.blobs.path(record["dcm_blob"])), f"{record['id']}.dcm")


def _open_stored(blobs: BlobStore, path: Path) -> BinaryIO:
    with deleted_is_404():
        return blobs.open_file(path)  # decrypting as it is read, when encrypted at rest


async def anonymize_stored(svc: Service, instance_id: str, request: Request) -> Ingested:
    """``POST /dicom/{id}/anonymize``: an anonymized copy of a stored instance, stored like any other,
    as the caller's. Only an admin may anonymize what another user stored: an uploader who can
    see it (DICOMSVC_VISIBILITY=all) is refused with 403; under ``own`` it is not found (404)."""
    record = await _instance(svc, instance_id, owner_of(request))
    who = identity(request)
    if not who.is_admin and record["uploaded_by"] != who.owner:
        raise Forbidden("only an admin may anonymize an instance another user stored")
    fields = await read_json_object(request) if await _has_body(request) else {}
    options = Options.from_request(request.query_params, fields)
    options = Options(
        anonymize=True, allow_burned_in=options.allow_burned_in, anonymized_from=record["id"], user=who.owner
    )
    temp = await svc.io(_copy_to_temp, svc.blobs, svc.blobs.path(record["dcm_blob"]))
    try:
        return await svc.cpu(tasks.ingest_file, svc.config, temp, "(anonymized)", options)
    finally:
        await svc.io(svc.blobs.discard, temp)


async def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers


def _copy_to_temp(blobs: BlobStore, path: Path) -> Path:
    with _open_stored(blobs, path) as src:
        return blobs.spool(src, 1 << 62)


# Arrays, DICOM JSON and bulk data: read from the stored DICOM file -------------------------


async def pixels(
    svc: Service, instance_id: str, query: Mapping[str, str], owner: str | None = None
) -> tuple[Path, str]:
    """``GET /dicom/{id}/pixels``: a temporary .npy file (frames decoded one at a time, in a
    worker) and the name to offer it under; the caller removes the file once sent."""
    record = await _instance(svc, instance_id, owner)
    frame = _frame_param(query.get("frame"))
    rescale = flag(query.get("rescale"), "rescale")
    temp = await svc.cpu(tasks.write_npy, svc.config, record["dcm_blob"], frame, rescale)
    suffix = (f"-frame{frame}" if frame else "") + ("-rescaled" if rescale else "")
    return temp, f"{record['id']}{suffix}.npy"


def _frame_param(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest("frame must be a whole number from 1")
    return int(raw)


async def dicom_json(svc: Service, instance_id: str | None, base_url: str, owner: str | None = None) -> dict:
    """``GET /tags?id=&format=dicomjson``: the DICOM JSON model, bulk data by reference."""
    record = await _instance(svc, instance_id, owner)
    bulk_base = f"{base_url}/dicom/{record['id']}/bulk/"
    return await svc.cpu(tasks.dicom_json, svc.config, record["dcm_blob"], bulk_base)


async def bulk(
    svc: Service, instance_id: str, element_path: str, owner: str | None = None
) -> tuple[int, Iterator[bytes]]:
    """``GET /dicom/{id}/bulk/{path}``: one binary value, streamed from the stored file."""
    record = await _instance(svc, instance_id, owner)
    return await svc.io(tasks.bulk, svc.blobs.stored(record["dcm_blob"]), element_path)
