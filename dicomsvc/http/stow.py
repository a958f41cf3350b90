"""STOW-RS (DICOMweb, PS3.18 10.5): ``POST /dicomweb/studies[/{StudyInstanceUID}]`` (and the
same at ``/studies``, where it was first served).

The body is ``multipart/related; type="application/dicom"``, one instance a
part. The answer is ``application/dicom+json``: a Referenced SOP Sequence for
what was stored (duplicates included: they are stored), each item's Retrieve URL
(0008,1190) its WADO-RS instance URL, and a Failed SOP Sequence with a Failure Reason
for the rest; the top-level Retrieve URL is the study's, when the stored instances are
of one study (PS3.18 Table 10.5.3-2). 200 when all were stored, 202 when some
were, 409 when none were, 415 for any other media type. ``?anonymize=true`` anonymizes, as on
``POST /dicom``.
"""

from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from .. import audit, batch, metrics
from ..batch import Entry, Item, Result
from ..errors import UnsupportedMediaType
from ..options import Options
from ..dicom.webjson import instance_path, study_path
from ..service import Service
from ..storage import instances
from ..storage.spool import new_spool, remove_spool
from . import uploads
from .auth import user_of
from .intake import Answer

# (0008,1197) Failure Reason values (PS3.4 Annex B, PS3.18 Table 10.5.3-1)
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
# Implementation-specific, in the "cannot understand" range (Table I.2-2 allows more codes):
# the instance is not of the study the URL names (the error code study_mismatch elsewhere)
STUDY_MISMATCH = 0xC409
Location = tuple[str | None, str | None, str]  # (study, series, SOP instance UID)
REASONS = {"invalid_dicom": CANNOT_UNDERSTAND, "too_large": OUT_OF_RESOURCES, "study_mismatch": STUDY_MISMATCH}


async def store_instances(svc: Service, request: Request, study_uid: str | None, base_url: str) -> Answer:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    part_type = options.get(b"type", b"").decode("latin-1").strip('"').lower()
    if kind.lower() != b"multipart/related" or part_type != "application/dicom":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"')
    cfg = svc.config
    options = Options.from_request(request.query_params, user=user_of(request))
    folder = await svc.io(new_spool, cfg.spool_dir)
    try:
        parts = await uploads.spool_multipart(svc, request, folder, cfg.max_upload_bytes, cfg.max_archive_files)
        entries: list[Entry] = [
            Item.of(f"part {n}", "spooled", str(p.path), options)
            if p.path is not None and p.content_type in ("application/dicom", "application/octet-stream")
            else batch.failed(f"part {n}", "unsupported_media_type", f"a part of type {p.content_type}")
            for n, p in enumerate(parts, 1)
        ]
        results = await batch.run_entries(svc, entries, study_uid=study_uid)
        audit.note_results(results)
        metrics.count_results(results)
    finally:
        await svc.io(remove_spool, folder)
    where = await instances.locations(svc.db, [r.id for r in results if r.stored and r.id])
    return _answer(results, base_url, where)


def _answer(results: list[Result], base_url: str, where: dict[str, Location]) -> Answer:
    stored = [r for r in results if r.stored]
    failed = [r for r in results if not r.stored]
    body: dict = {}
    found_studies = {where[r.id][0] for r in stored if r.id in where}
    if len(found_studies) == 1 and None not in found_studies:  # (0008,1190) Retrieve URL of the study
        body["00081190"] = {"vr": "UR", "Value": [base_url + study_path(found_studies.pop())]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced(r, base_url, where.get(r.id)) for r in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed(r) for r in failed]}
    status = 409 if not stored and results else (202 if failed else 200)
    return Answer(status, body)


def _uid(value: str | None) -> dict:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _referenced(result: Result, base_url: str, location: Location | None) -> dict:
    item = {
        "00081150": _uid(result.sop_class_uid),  # Referenced SOP Class UID
        "00081155": _uid(result.sop_instance_uid),  # Referenced SOP Instance UID
    }
    if location is not None and location[0] and location[1]:  # Retrieve URL: WADO-RS (PS3.18 §10.4)
        item["00081190"] = {"vr": "UR", "Value": [base_url + instance_path(*location)]}
    else:  # an instance without Study or Series Instance UID: only dicomsvc's own route reaches it
        item["00081190"] = {"vr": "UR", "Value": [f"{base_url}/dicom/{result.id}/file"]}
    return item


def _failed(result: Result) -> dict:
    reason = REASONS.get(result.error or "", PROCESSING_FAILURE)
    if result.status == "skipped":  # not DICOM at all
        reason = CANNOT_UNDERSTAND
    return {
        "00081150": _uid(result.sop_class_uid),
        "00081155": _uid(result.sop_instance_uid),
        "00081197": {"vr": "US", "Value": [reason]},  # Failure Reason
    }
