"""Photos and scans (JPEG, PNG) to DICOM: what a request asks for, checked in the server.

A JPEG or PNG sent to ``POST /dicom`` (raw, or as multipart ``file`` parts) becomes a
Secondary Capture Image Storage instance (PS3.3 A.8.1) in a worker
(``dicomsvc.imaging.photo``), then goes through the pipeline like any upload. This module
is the server's part, without pydicom or Pillow: which bodies are images (their media type,
their first bytes) and the patient and study attributes the request gives, named by their
DICOM keywords and checked against their VRs (``dicomsvc.dicom.vr``). What it returns (a
*capture*) is a plain dict: it is pickled to a worker and stored with a job's items.

The capture's ``nonce`` makes the UIDs: the worker derives the Study, Series and SOP Instance
UIDs from it (``pydicom.uid.generate_uid`` with entropy sources), so every image of one
request lands in one new series (of one new study unless StudyInstanceUID names one), and a
job's item ingested again after a restart gets the same UIDs (and is found a duplicate).
"""

import secrets
from collections.abc import Mapping
from datetime import datetime, timezone

from .dicom import vr
from .errors import BadRequest, StudyMismatch
from .storage import studies
from .storage.studies import Condition

JPEG_MAGIC = b"\xff\xd8\xff"  # SOI then the next marker's 0xFF (ITU T.81 B.1.1.3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # the PNG signature (ISO/IEC 15948 §5.2)
IMAGE_TYPES = {"image/jpeg": "jpeg", "image/pjpeg": "jpeg", "image/png": "png"}

# The attributes a request may give, by keyword, with their VRs (PS3.6 Table 6-1)
FIELDS = {
    "PatientName": "PN",  # (0010,0010)
    "PatientID": "LO",  # (0010,0020)
    "PatientBirthDate": "DA",  # (0010,0030)
    "PatientSex": "CS",  # (0010,0040)
    "StudyInstanceUID": "UI",  # (0020,000D): attach the image to this study
    "StudyDescription": "LO",  # (0008,1030)
    "SeriesDescription": "LO",  # (0008,103E)
    "Modality": "CS",  # (0008,0060)
    "AccessionNumber": "SH",  # (0008,0050)
}
PATIENT_SEX = ("M", "F", "O")  # PS3.3 C.7.1.1 Table C.7-1: Enumerated Values
DEFAULT_MODALITY = "OT"  # Other (PS3.3 C.7.3.1.1.1)


def image_kind(head: bytes) -> str | None:
    """"jpeg" or "png" when the first bytes are that format's signature, else None."""
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    return None


def capture(*sources: Mapping, now: datetime | None = None) -> dict:
    """The capture a request asks for: the attributes from ``sources`` (the query string, form
    fields), checked; ``study_type`` (a free label) as Study Description when none is given;
    Burned In Annotation (0028,0301) YES unless ``burned_in=no``. BadRequest names the field
    and the rule, never the value (it may be patient data)."""
    fields: dict[str, str] = {}
    for name in (*FIELDS, "study_type", "burned_in"):
        given = {str(v).strip() for source in sources for v in _values(source, name) if str(v).strip()}
        if len(given) > 1:
            raise BadRequest(f"{name} is given twice with different values (query string or form)")
        if given:
            fields[name] = given.pop()
    for name, value in fields.items():
        if name in FIELDS:
            problem = vr.check(FIELDS[name], value)
            if problem:
                raise BadRequest(f"{name} {problem}")
    if fields.get("PatientSex", "M") not in PATIENT_SEX:
        raise BadRequest("PatientSex must be M, F or O (PS3.3 C.7.1.1)")
    label = fields.pop("study_type", None)
    if label is not None:
        problem = vr.check("LO", label)
        if problem:
            raise BadRequest(f"study_type {problem} (it is stored as Study Description, LO)")
        if fields.setdefault("StudyDescription", label) != label:
            raise BadRequest("study_type and StudyDescription are both given and differ: study_type is stored "
                             "as Study Description (0008,1030), give one of them")  # fmt: skip
    burned = fields.pop("burned_in", "yes").lower()
    if burned not in ("yes", "no"):
        raise BadRequest("burned_in must be yes or no")
    fields.setdefault("Modality", DEFAULT_MODALITY)
    now = now or datetime.now(timezone.utc)
    return {
        "fields": fields,
        "burned_in": burned.upper(),
        "nonce": secrets.token_hex(16),
        "created": now.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S.%f"),
        "number": 1,
    }


def _values(source: Mapping, name: str) -> list:
    """Every value ``source`` holds for ``name``: a query string's repeated parameter
    (``getlist``) or a form's repeated field (a list) gives them all, never silently one."""
    if hasattr(source, "getlist"):
        return list(source.getlist(name))
    value = source.get(name)
    return [] if value is None else value if isinstance(value, list) else [value]


# What an image attached to a stored study takes from it when the request does not say
# (the study row's columns, storage.studies): the Patient and General Study modules'
# attributes, which are the study's, not the instance's (PS3.3 C.7.1.1, C.7.2.1)
FROM_STUDY = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "AccessionNumber": "accession_number",
    "StudyDescription": "study_description",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "StudyID": "study_id",
    "ReferringPhysicianName": "referring_physician_name",
}


async def attach(db: studies.HasConnection, spec: dict, owner: str | None) -> dict:
    """``spec`` with what a stored study named by StudyInstanceUID (one the caller may see:
    ``owner``) holds for the attributes the request did not give, so the image does not blank
    the study's patient in QIDO-RS (a study shows its newest instance's attributes). A
    PatientID other than the study's is refused (409): the image would join another
    patient's study. A study not stored yet is made with the given UID."""
    uid = spec["fields"].get("StudyInstanceUID")
    if uid is None:
        return spec
    rows = await studies.search(db, "study", [Condition("StudyInstanceUID", "single", (uid,))], 1, 0, owner=owner)
    if not rows:
        return spec
    study, fields = rows[0], dict(spec["fields"])
    if study["patient_id"] and fields.get("PatientID", study["patient_id"]) != study["patient_id"]:
        raise StudyMismatch("PatientID differs from the Patient ID of the study StudyInstanceUID names")
    for keyword, column in FROM_STUDY.items():
        if keyword not in fields and study.get(column):
            fields[keyword] = str(study[column])
    return spec | {"fields": fields}


def numbered(spec: dict, number: int) -> dict:
    """The capture for the ``number``-th image of a request: (0020,0013) Instance Number."""
    return spec | {"number": number}
