"""Finding and managing what is stored: search, metadata, delete, statistics.

Filters use DICOM keywords, as DICOMweb's QIDO-RS does: ``PatientID``,
``StudyInstanceUID``, ``SeriesInstanceUID``, ``SOPInstanceUID``, ``Modality``,
``AccessionNumber`` (exact) and ``StudyDate`` (``20200101``, or a range
``20200101-20201231`` with either end open). Every filter is an indexed column.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import BadRequest, NotFound
from ..options import flag
from .. import audit, jobs, metrics
from ..removal import remove_blobs
from ..service import Service
from ..storage import instances
from ..storage.instances import FILTERS, DateRange
from .instances import check_id
from .readcache import ReadCache

DATE_RANGE = re.compile(r"(\d{8})?-(\d{8})?")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


@dataclass(frozen=True)
class Filters:
    exact: dict[str, str]  # DICOM keyword -> value
    study_date: DateRange | None  # an exact date is a range from it to itself

    def __bool__(self) -> bool:
        return bool(self.exact) or self.study_date is not None


def filters(query: Mapping[str, str], allowed_extra: set[str] = frozenset()) -> Filters:
    """The filters in ``query``; unknown parameters are refused (DELETE must never widen)."""
    unknown = set(query) - set(FILTERS) - {"StudyDate"} - allowed_extra
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    exact = {keyword: query[keyword] for keyword in FILTERS if keyword in query}
    study_date = None
    if "StudyDate" in query:
        value = query["StudyDate"].strip()
        if re.fullmatch(r"\d{8}", value):
            study_date = (value, value)
        elif (match := DATE_RANGE.fullmatch(value)) and value != "-":
            study_date = match.groups()
        else:
            raise BadRequest("StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be open)")
    return Filters(exact, study_date)


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def mine(query: Mapping[str, str], owner: str | None, user: str | None) -> str | None:
    """The owner filter with ``?mine=true`` (the caller's own uploads) applied to ``owner`` (the
    visibility filter, which, when set, is the caller already)."""
    if not flag(query.get("mine"), "mine"):
        return owner
    if user is None:
        raise BadRequest("mine=true needs an authenticated user (DICOMSVC_AUTH is none)")
    return user


async def search(svc: Service, query: Mapping[str, str], owner: str | None = None, user: str | None = None) -> dict:
    """``GET /dicom``: a page of summaries, newest first, and the offset of the next page.
    ``owner``: only that user's uploads are found; ``user``: the caller (for ``mine=true``)."""
    wanted = filters(query, {"limit", "offset", "mine"})
    limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(query, "offset", 0, 0, 10**12)
    owner = mine(query, owner, user)
    rows = await instances.search(svc.db, wanted.exact, wanted.study_date, limit + 1, offset, owner)
    more = len(rows) > limit
    return {
        "items": [summary(r) for r in rows[:limit]],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }


def summary(row: dict) -> dict:
    return {
        "id": row["id"],
        "PatientID": row["patient_id"],
        "PatientName": row["patient_name"],
        "StudyInstanceUID": row["study_instance_uid"],
        "SeriesInstanceUID": row["series_instance_uid"],
        "SOPInstanceUID": row["sop_instance_uid"],
        "Modality": row["modality"],
        "StudyDate": row["study_date"],
        "AccessionNumber": row["accession_number"],
        "created": row["created_at"],
        "uploaded_by": row["uploaded_by"],
    }


async def metadata(svc: Service, instance_id: str, owner: str | None = None) -> dict:
    """``GET /dicom/{id}``: what the seeds call metadata."""
    row = await instances.get_instance(svc.db, check_id(instance_id), owner)
    if row is None:
        raise NotFound("no instance with that id")
    return summary(row) | {
        "PatientSex": row["patient_sex"],
        "PatientBirthDate": row["patient_birth_date"],
        "StudyDescription": row["study_description"],
        "SOPClassUID": row["sop_class_uid"],
        "TransferSyntaxUID": row["transfer_syntax_uid"],
        "Rows": row["rows"],
        "Columns": row["columns"],
        "NumberOfFrames": row["frames"],
        "BitsAllocated": row["bits_allocated"],
        "BitsStored": row["bits_stored"],
        "PhotometricInterpretation": row["photometric"],
        "has_pixels": bool(row["has_pixels"]),
        "render_error": row["render_error"],
        "bytes": {"dicom": row["dcm_bytes"], "png": row["png_bytes"]},
        "source": row["source"],
        "anonymized": bool(row["anonymized"]),
        "anonymized_from": row["anonymized_from"],
    }


async def delete_one(svc: Service, instance_id: str, cache: ReadCache | None = None) -> None:
    """``DELETE /dicom/{id}``: the rows and every blob of the instance (and ``cache``'s answers)."""
    gone = await instances.delete(svc.db, {"id": check_id(instance_id)})
    _forget(cache, gone)
    if not gone:
        raise NotFound("no instance with that id")
    metrics.deleted(len(gone))
    await svc.io(remove_blobs, svc.blobs, gone)


async def delete_matching(svc: Service, query: Mapping[str, str], cache: ReadCache | None = None) -> int:
    """``DELETE /dicom?StudyInstanceUID=...``: a filter is required."""
    wanted = filters(query)
    if not wanted:
        raise BadRequest("refusing to delete everything: give a filter such as StudyInstanceUID")
    gone = await instances.delete(svc.db, wanted.exact, wanted.study_date)
    _forget(cache, gone)
    audit.note_instances(row["id"] for row in gone)
    metrics.deleted(len(gone))
    await svc.io(remove_blobs, svc.blobs, gone)
    return len(gone)


async def delete_study(
    svc: Service, study: str, series: str | None = None, sop: str | None = None, cache: ReadCache | None = None
) -> int:
    """``DELETE /dicomweb/studies/{study}[/series/{series}[/instances/{sop}]]``: every instance
    of the study, series (or the instance), with its rows, DICOM JSON, blobs and cached
    renderings; the study and series rows follow (storage.studies). 404: nothing to delete."""
    exact = {"StudyInstanceUID": study}
    if series is not None:
        exact["SeriesInstanceUID"] = series
    if sop is not None:
        exact["SOPInstanceUID"] = sop
    gone = await instances.delete(svc.db, exact)
    _forget(cache, gone)
    audit.note_instances(row["id"] for row in gone)
    metrics.deleted(len(gone))
    if not gone:
        raise NotFound(f"no such {'instance' if sop else 'series' if series else 'study'}")
    await svc.io(remove_blobs, svc.blobs, gone)
    return len(gone)


def _forget(cache: ReadCache | None, gone: list[dict]) -> None:
    """Right after the delete commits, before anything is awaited: the read cache never
    answers for an instance that is gone (``readcache``)."""
    if cache is not None:
        cache.forget(row["id"] for row in gone)


async def stats(svc: Service, owner: str | None = None) -> dict:
    """``GET /stats``: over everything, or (``owner``) over that user's uploads."""
    return await instances.stats(svc.db, owner)


async def job_status(
    svc: Service, job_id: str, query: Mapping[str, str], owner: str | None = None, stopping=None
) -> bytes:
    """``GET /jobs/{id}[?wait=seconds][&results=false]``: the job's status, once it has ended when
    ``wait`` is given (at most that long; the server stopping answers at once:
    ``jobs.wait_for_end``); ``results=false`` leaves out the per-file results (a progress poll)."""
    with_results = query.get("results") is None or flag(query.get("results"), "results")
    raw = query.get("wait")
    if raw is not None:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= jobs.MAX_WAIT_SECONDS:  # NaN too
            raise BadRequest(f"wait must be a number of seconds from 0 to {jobs.MAX_WAIT_SECONDS}")
        await jobs.wait_for_end(svc, job_id, seconds, owner, stopping)
    return await jobs.status_json(svc, job_id, owner, with_results)


async def jobs_page(svc: Service, query: Mapping[str, str], owner: str | None = None, user: str | None = None) -> dict:
    """``GET /jobs[?mine=true]``, ``GET /users/{user}/jobs``: a page of jobs, newest first."""
    unknown = set(query) - {"limit", "offset", "mine"}
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(query, "offset", 0, 0, 10**12)
    return await jobs.listing(svc, limit, offset, mine(query, owner, user))
