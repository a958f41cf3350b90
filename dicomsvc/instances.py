"""Reading stored instances back: the PNG and the tag rows."""

import re
from dataclasses import dataclass

from . import store
from .errors import BadRequest, NoPixelData, NotFound, UnsupportedTransferSyntax
from .service import Service
from .web import etag_matches

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
