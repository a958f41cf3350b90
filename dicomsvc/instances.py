"""Reading stored instances back: the PNG and the tag rows."""

import re
from dataclasses import dataclass
from pathlib import Path

from . import store
from .errors import BadRequest, NoPixelData, NotFound, UnsupportedTransferSyntax
from .service import Service

ID_RE = re.compile(r"^[0-9A-Za-z]{22}$")  # shortuuid.uuid()


@dataclass(frozen=True)
class Image:
    etag: str
    path: Path

    async def read(self, svc: Service) -> bytes:
        """The PNG's bytes, in one trip to a worker thread (a FileResponse makes several)."""
        return await svc.io(self.path.read_bytes)


def check_id(instance_id: str | None) -> str:
    if not instance_id:
        raise BadRequest("the 'id' query parameter is required")
    if not ID_RE.match(instance_id):
        raise NotFound("no instance with that id")
    return instance_id


async def _instance(svc: Service, instance_id: str | None) -> dict:
    record = await store.get_instance(svc.db, check_id(instance_id))
    if record is None:
        raise NotFound("no instance with that id")
    return record


async def image(svc: Service, instance_id: str | None) -> Image:
    """The PNG rendered at ingest (no decoding on this path)."""
    record = await _instance(svc, instance_id)
    if not record["has_pixels"]:
        raise NoPixelData("this instance has no pixel data")
    if record["png_blob"] is None:
        raise UnsupportedTransferSyntax(record["render_error"] or "pixel data could not be rendered")
    return Image(etag=f'"{record["id"]}.png"', path=svc.blobs.path(record["png_blob"]))


async def tags_json(svc: Service, instance_id: str | None) -> bytes:
    """``{"uuid": id, "tags": [...]}`` as JSON bytes, the rows serialized by SQLite."""
    rows = await store.get_tags_json(svc.db, check_id(instance_id))
    if rows is None:
        raise NotFound("no instance with that id")
    return b'{"uuid":"%s","tags":%s}' % (instance_id.encode(), rows.encode())
