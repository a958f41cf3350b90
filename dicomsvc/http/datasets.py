"""/datasets: clinical CSVs joined to stored studies (``dicomsvc.datasets`` does the work, in a worker).

POST /datasets takes multipart/form-data: ``csv`` the file (a file part: ``curl -F csv=@file.csv``),
``key`` (PatientID | AccessionNumber | StudyInstanceUID), optional ``column`` and ``anonymize``.
The body is spooled to disk (never whole in memory) within DICOMSVC_DATASET_MAX_BYTES plus room for
the other fields, then read, joined and stored by one worker task; the spool goes with the request.
"""

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from starlette.requests import Request

from .. import audit, exports, tasks
from ..errors import BadRequest, Forbidden, NotFound, UnsupportedMediaType
from ..options import flag
from ..service import Service
from ..storage import datasets as store
from ..storage import spool
from . import uploads
from .auth import identity, owner_of, user_of
from .requests import base_url, read_json_object

log = logging.getLogger("dicomsvc")
FIELDS = {"csv", "key", "column", "anonymize"}
FORM_ROOM = 256 * 1024  # bytes of a request besides the CSV: boundaries, part headers, the small fields
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
LISTED = ("id", "key", "column", "anonymized", "columns", "created_by", "created_at", "rows", "matched", "study_count")


async def create(svc: Service, request: Request) -> dict:
    """POST /datasets: the summary of the stored dataset (row numbers, never values)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise UnsupportedMediaType("send multipart/form-data: the file as part 'csv', the key column's kind as 'key'")
    cfg = svc.config
    folder = await svc.io(spool.new_spool, cfg.spool_dir)
    try:
        parts = await uploads.spool_multipart(svc, request, folder, cfg.dataset_max_bytes + FORM_ROOM, len(FIELDS) + 4)
        unknown = sorted({p.name for p in parts} - FIELDS)
        if unknown:
            raise BadRequest(f"unknown form field(s): {', '.join(unknown)} (expected csv, key, column, anonymize)")
        files = [p for p in parts if p.name == "csv"]
        if len(files) != 1:
            raise BadRequest("send the CSV file as exactly one part named 'csv'")
        repeated = sorted({p.name for p in parts if p.name != "csv" and [q.name for q in parts].count(p.name) > 1})
        if repeated:  # one key, one column: never one of two values picked silently
            raise BadRequest(f"form field(s) given more than once: {', '.join(repeated)}")
        fields = {p.name: p.value for p in parts if p.name != "csv"}
        key = (fields.get("key") or "").strip()
        if key not in store.KEY_COLUMNS:
            raise BadRequest(f"key must be one of {', '.join(store.KEY_COLUMNS)}")
        column = (fields.get("column") or "").strip() or None
        said = [v for v in (fields.get("anonymize"), *request.query_params.getlist("anonymize")) if v is not None]
        anonymize = any([flag(v, "anonymize") for v in said])  # every one read: a typo is a 400
        path = files[0].path
        if path is None:  # sent as a plain form field (no filename): small, kept in memory
            path = folder / "csv"
            await svc.io(_write, path, (files[0].value or "").encode("utf-8"), svc.blobs.keyring)
        summary = await svc.cpu(
            tasks.create_dataset, cfg, str(path), key, column, anonymize, owner_of(request), user_of(request)
        )
    finally:
        await svc.io(spool.remove_spool, folder)
    audit.note(dataset=summary["id"])
    return summary


def _write(path: Path, data: bytes, keyring) -> None:
    with spool.create(path, keyring) as out:
        out.write(data)


async def get(svc: Service, dataset_id: str, owner: str | None) -> dict:
    """GET /datasets/{dataset}: its summary and the matched studies' UIDs."""
    found = await store.get(svc.db, dataset_id, owner)
    if found is None:
        raise NotFound("no such dataset")
    return found | {"studies": await store.study_uids(svc.db, dataset_id)}


async def delete(svc: Service, request: Request) -> None:
    """DELETE /datasets/{dataset}: the dataset and its joined rows go (never the studies); its
    uploader or an admin may (under DICOMSVC_VISIBILITY=own others' datasets are 404, as for
    GET). Its exports' results go with it (``exports.expire``: 410 from now on)."""
    dataset_id = request.path_params["dataset"]
    found = await store.get(svc.db, dataset_id, owner_of(request))
    if found is None:
        raise NotFound("no such dataset")
    who = identity(request)
    if not who.is_admin and found["created_by"] != who.owner:
        raise Forbidden("only the dataset's uploader or an admin may delete it")
    if not await store.delete(svc.db, dataset_id):
        raise NotFound("no such dataset")  # deleted meanwhile
    audit.note(dataset=dataset_id)
    try:
        await exports.expire(svc)
    except Exception as exc:  # the bucket away for a moment: the periodic sweep removes them (410 already)
        log.warning("the deleted dataset's export results could not be removed now: %s", type(exc).__name__)


async def listing(svc: Service, query: Mapping[str, str], owner: str | None) -> dict:
    """GET /datasets: a page of datasets, newest first, with their counts; ``next_offset`` as
    GET /jobs gives it (None on the last page)."""
    unknown = set(query) - {"limit", "offset"}
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    limit = _number(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _number(query, "offset", 0, 0, 10**12)
    items = []
    page = await store.listing(svc.db, limit + 1, offset, owner)
    for found in page[:limit]:
        counts = {f"{name}_count": len(found.get(name, ())) for name in ("unmatched", "ambiguous", "duplicates")}
        items.append({name: found.get(name) for name in LISTED} | counts)
    return {"items": items, "limit": limit, "offset": offset, "next_offset": offset + limit if len(page) > limit else None}


async def export(svc: Service, request: Request) -> tuple[str, str]:
    """POST /datasets/{dataset}/export: the export's job id and its status URL (202)."""
    body = await read_json_object(request)
    job_id = await exports.submit(svc, request.path_params["dataset"], body, owner_of(request), user_of(request))
    audit.note(job=job_id)
    return job_id, f"{base_url(request)}/jobs/{job_id}"


async def export_result(svc: Service, request: Request) -> tuple[Iterator[bytes], str]:
    """GET /jobs/{job}/result: the export's ZIP, streamed (made while it is sent), and its name."""
    job_id = request.path_params["job"]
    folder = await exports.result(svc, job_id, owner_of(request))
    return exports.zip_stream(folder, exports.member_opener(svc, job_id, folder)), f"{job_id}.zip"


def _number(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 13) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(raw)
