"""Finding and managing what is stored: search, metadata, delete, statistics.

Filters use DICOM keywords, as DICOMweb's QIDO-RS does: ``PatientID``,
``StudyInstanceUID``, ``SeriesInstanceUID``, ``SOPInstanceUID``, ``Modality``,
``AccessionNumber`` (exact) and ``StudyDate`` (``20200101``, or a range
``20200101-20201231`` with either end open). Every filter is an indexed column.
"""

import re
from collections.abc import Mapping

from . import store
from .blobs import BlobStore
from .errors import BadRequest, NotFound
from .instances import check_id
from .service import Service

EXACT = {
    "PatientID": "patient_id",
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "Modality": "modality",
    "AccessionNumber": "accession_number",
}
DATE_RANGE = re.compile(r"(\d{8})?-(\d{8})?")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


def where(query: Mapping[str, str], allowed_extra: set[str] = frozenset()) -> tuple[str, list]:
    """The SQL condition for the filters in ``query``; unknown parameters are refused."""
    unknown = set(query) - set(EXACT) - {"StudyDate"} - allowed_extra
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    clauses, params = [], []
    for keyword, column in EXACT.items():
        if keyword in query:
            clauses.append(f"{column} = ?")
            params.append(query[keyword])
    if "StudyDate" in query:
        value = query["StudyDate"].strip()
        if re.fullmatch(r"\d{8}", value):
            clauses.append("study_date = ?")
            params.append(value)
        elif (match := DATE_RANGE.fullmatch(value)) and value != "-":
            low, high = match.groups()
            if low:
                clauses.append("study_date >= ?")
                params.append(low)
            if high:
                clauses.append("study_date <= ?")
                params.append(high)
        else:
            raise BadRequest("StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be open)")
    return " AND ".join(clauses) or "1", params


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


async def search(svc: Service, query: Mapping[str, str]) -> dict:
    """``GET /dicom``: a page of summaries, newest first, and the offset of the next page."""
    condition, params = where(query, {"limit", "offset"})
    limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(query, "offset", 0, 0, 10**12)
    rows = await store.search(svc.db, condition, params, limit + 1, offset)
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
    }


async def metadata(svc: Service, instance_id: str) -> dict:
    """``GET /dicom/{id}``: what the seeds call metadata."""
    row = await store.get_instance(svc.db, check_id(instance_id))
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


async def delete_one(svc: Service, instance_id: str) -> None:
    """``DELETE /dicom/{id}``: the rows and every blob of the instance."""
    gone = await store.delete(svc.db, "id = ?", [check_id(instance_id)])
    if not gone:
        raise NotFound("no instance with that id")
    await svc.io(_remove_blobs, svc.blobs, gone)


async def delete_matching(svc: Service, query: Mapping[str, str]) -> int:
    """``DELETE /dicom?StudyInstanceUID=...``: a filter is required."""
    condition, params = where(query)
    if not params:
        raise BadRequest("refusing to delete everything: give a filter such as StudyInstanceUID")
    gone = await store.delete(svc.db, condition, params)
    await svc.io(_remove_blobs, svc.blobs, gone)
    return len(gone)


def _remove_blobs(blobs: BlobStore, gone: list[dict]) -> None:
    """After the rows are committed away: a crash in between leaves unused files, never a
    row pointing at nothing."""
    for row in gone:
        blobs.remove(row["dcm_blob"], row["png_blob"])
        blobs.remove_renderings(row["id"])


async def stats(svc: Service) -> dict:
    return await store.stats(svc.db)
