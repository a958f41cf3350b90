"""Stored instances: the PNG, the tag rows, the DICOM file, an anonymized copy."""

import re
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from . import store
from .blobs import BlobStore
from .ingest import Ingested, Options, ingest_file
from .intake import flag
from .errors import BadRequest, NoPixelData, NotFound, UnsupportedTransferSyntax
from .service import Service
from .web import etag_matches, read_json_object

ID_RE = re.compile(r"[0-9A-Za-z]{22}")  # shortuuid.uuid()


@dataclass(frozen=True)
class Image:
    etag: str
    png: bytes | None  # None: the client's copy (If-None-Match) is current


def check_id(instance_id: str | None) -> str:
    if not instance_id:
        raise BadRequest("the 'id' query parameter is required")
    if not ID_RE.fullmatch(instance_id):
        raise NotFound("no instance with that id")
    return instance_id


async def _instance(svc: Service, instance_id: str | None) -> dict:
    record = await store.get_instance(svc.db, check_id(instance_id))
    if record is None:
        raise NotFound("no instance with that id")
    return record


async def image(svc: Service, instance_id: str | None, if_none_match: str | None = None) -> Image:
    """The PNG rendered at ingest (no decoding on this path), unless the client has it."""
    record = await _instance(svc, instance_id)
    if not record["has_pixels"]:
        raise NoPixelData("this instance has no pixel data")
    if record["png_blob"] is None:
        raise UnsupportedTransferSyntax(record["render_error"] or "pixel data could not be rendered")
    etag = f'"{record["id"]}.png"'  # stored PNGs never change
    if etag_matches(if_none_match, etag):
        return Image(etag, None)
    # one trip to an I/O thread (a FileResponse makes several)
    return Image(etag, await svc.io(svc.blobs.path(record["png_blob"]).read_bytes))


async def tags_json(svc: Service, instance_id: str | None) -> bytes:
    """``{"uuid": id, "tags": [...]}`` as JSON bytes, the rows serialized by SQLite."""
    rows = await store.get_tags_json(svc.db, check_id(instance_id))
    if rows is None:
        raise NotFound("no instance with that id")
    return b'{"uuid":"%s","tags":%s}' % (instance_id.encode(), rows.encode())


@dataclass(frozen=True)
class StoredFile:
    path: Path
    filename: str  # safe for Content-Disposition: the id, never a name from the data


async def dicom_file(svc: Service, instance_id: str) -> StoredFile:
    """``GET /dicom/{id}/file``: the stored DICOM file, as it was stored."""
    record = await _instance(svc, instance_id)
    return StoredFile(svc.blobs.path(record["dcm_blob"]), f"{record['id']}.dcm")


async def anonymize_stored(svc: Service, instance_id: str, request: Request) -> Ingested:
    """``POST /dicom/{id}/anonymize``: an anonymized copy of a stored instance, stored like any other."""
    record = await _instance(svc, instance_id)
    query = request.query_params
    fields = await read_json_object(request) if await _has_body(request) else {}
    allow = flag(query.get("allow_burned_in")) or flag(fields.get("allow_burned_in"))
    temp = await svc.io(_copy_to_temp, svc.blobs, svc.blobs.path(record["dcm_blob"]))
    options = Options(anonymize=True, allow_burned_in=allow, anonymized_from=record["id"])
    try:
        return await svc.cpu(ingest_file, svc.config, temp, "(anonymized)", options)
    finally:
        await svc.io(svc.blobs.discard, temp)


async def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers


def _copy_to_temp(blobs: BlobStore, path: Path) -> Path:
    with open(path, "rb") as src:
        return blobs.spool(src, 1 << 62)
