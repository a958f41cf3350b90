"""WADO-RS metadata (PS3.18 §10.4.1.1.2): a study's, a series' or an instance's DICOM JSON.

Served from what ingest stored (``dicom_json``), never by re-reading files: one query a
page of instances, SQLite joining the stored objects and making their BulkDataURIs absolute
for the host the client used; the answer is streamed page by page. Instances stored before
ingest kept their JSON get it made from their files (in a worker) on first request, and kept.

The ETag is strong: it changes whenever the study or series gains or loses an instance
(their revision), and with the base URL the BulkDataURIs carry.
"""

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ... import tasks
from ...dicom.webjson import STORED_BULK, absolute_bulk
from ...errors import NotFound
from ...service import Service
from ...storage import instances, studies
from ...storage.studies import Scope
from ..requests import etag_matches

PAGE = 1000  # instances a query (a 600-instance series is one): bounds a large study's memory


@dataclass(frozen=True)
class Metadata:
    etag: str
    chunks: AsyncIterator[bytes] | None  # None: the client's copy is current (304)


def _etag(scope: Scope, version: int, base: str, owner: str | None) -> str:
    key = json.dumps([*scope, version, base, owner]).encode()
    return f'"{hashlib.sha256(key).hexdigest()[:32]}"'


async def metadata(
    svc: Service, scope: Scope, base: str, if_none_match: str | None, owner: str | None = None
) -> Metadata:
    """The metadata of a study (``scope`` = (study, None, None)), series or instance; ``owner``
    (DICOMSVC_VISIBILITY=own): of that user's instances only (none: 404)."""
    version = await studies.version(svc.db, scope, owner)
    if version is None:
        raise NotFound(f"no such {'instance' if scope[2] else 'series' if scope[1] else 'study'}")
    etag = _etag(scope, version, base, owner)
    if etag_matches(if_none_match, etag) or etag_matches(if_none_match, etag[:-1] + '-gzip"'):
        return Metadata(etag, None)
    absolute = absolute_bulk(base)
    first = await _page(svc, scope, absolute, 0, owner)
    return Metadata(etag, _stream(svc, scope, absolute, first, owner))


async def _page(svc: Service, scope: Scope, absolute: str, offset: int, owner: str | None) -> tuple[int, str | None]:
    count, have, text = await studies.metadata_page(svc.db, scope, STORED_BULK, absolute, PAGE, offset, owner)
    if have < count:  # stored before ingest kept DICOM JSON: make it now, once
        missing = await studies.without_metadata(svc.db, scope, owner)
        for start in range(0, len(missing), PAGE):
            made = await svc.cpu(tasks.stored_metadata, svc.config, missing[start : start + PAGE])
            await instances.store_metadata(svc.db, made)
        count, have, text = await studies.metadata_page(svc.db, scope, STORED_BULK, absolute, PAGE, offset, owner)
    return count, text


async def _stream(
    svc: Service, scope: Scope, absolute: str, first: tuple[int, str | None], owner: str | None
) -> AsyncIterator[bytes]:
    count, text = first
    yield b"[" + (text or "").encode()
    offset = count
    while count == PAGE:
        count, text = await _page(svc, scope, absolute, offset, owner)
        if text:
            yield b"," + text.encode()
        offset += count
    yield b"]"
