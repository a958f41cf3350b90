"""C-FIND, C-GET and C-MOVE identifiers (PS3.4 Annex C) against the index QIDO-RS searches.

An identifier's Query/Retrieve Level (0008,0052) is one of PATIENT, STUDY, SERIES, IMAGE
(PS3.4 C.4.1.2.1); its elements with a value are matching keys (PS3.4 C.2.2.2: single value,
UID list, wildcard, date/time range, matched by ``dicomsvc.matching`` as QIDO-RS matches
them), all of them are return keys. Patient- and Study-Root information models are served
alike (PS3.4 C.6.1, C.6.2): the patient level is the studies grouped by Patient ID and
Name, as the index has no patient table. Return keys the index keeps in columns come from
the study/series/instance rows, any other from the stored DICOM JSON of the instance (or
of the level's representative instance); one we do not hold is returned empty (PS3.4
C.2.2.1.2). Keys of a level below the query's are not matched.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from ..errors import BadRequest
from ..matching import condition
from ..storage.studies import MATCHING_KEYS, Condition

# (0008,0052) Query/Retrieve Level -> the index's level, and the levels' order
LEVELS = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
RANK = {"PATIENT": 0, "STUDY": 1, "SERIES": 2, "IMAGE": 3}
PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
# keyword -> (row column, level rank it belongs to): PS3.4 C.6.1.1.2-5 / C.6.2.1.2-4 keys the index holds
COLUMNS = {
    "PatientID": ("patient_id", 0),
    "PatientName": ("patient_name", 0),
    "PatientBirthDate": ("patient_birth_date", 0),
    "PatientSex": ("patient_sex", 0),
    "NumberOfPatientRelatedStudies": ("*patient_studies", 0),
    "NumberOfPatientRelatedSeries": ("*patient_series", 0),
    "NumberOfPatientRelatedInstances": ("*patient_instances", 0),
    "StudyInstanceUID": ("study_instance_uid", 1),
    "StudyDate": ("study_date", 1),
    "StudyTime": ("study_time", 1),
    "AccessionNumber": ("accession_number", 1),
    "ReferringPhysicianName": ("referring_physician_name", 1),
    "StudyID": ("study_id", 1),
    "StudyDescription": ("study_description", 1),
    "ModalitiesInStudy": ("modalities", 1),
    "NumberOfStudyRelatedSeries": ("series_count", 1),
    "NumberOfStudyRelatedInstances": ("study_instance_count", 1),
    "SeriesInstanceUID": ("series_instance_uid", 2),
    "Modality": ("modality", 2),
    "SeriesNumber": ("series_number", 2),
    "SeriesDescription": ("series_description", 2),
    "PerformedProcedureStepStartDate": ("pps_start_date", 2),
    "PerformedProcedureStepStartTime": ("pps_start_time", 2),
    "NumberOfSeriesRelatedInstances": ("series_instance_count", 2),
    "SOPInstanceUID": ("sop_instance_uid", 3),
    "SOPClassUID": ("sop_class_uid", 3),
    "InstanceNumber": ("instance_number", 3),
    "Rows": ("rows", 3),
    "Columns": ("columns", 3),
    "BitsAllocated": ("bits_allocated", 3),
    "NumberOfFrames": ("frames", 3),
}
# The matching keys the index can match (storage.studies.MATCHING_KEYS), with the level each belongs to
MATCHABLE = {keyword: COLUMNS[keyword][1] for keyword in MATCHING_KEYS if keyword in COLUMNS}
SKIPPED = {Tag(0x0008, 0x0052), Tag(0x0008, 0x0005), Tag(0x0008, 0x0054)}  # level, character set, Retrieve AE Title
RETRIEVE_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class BadIdentifier(BadRequest):
    """An identifier we cannot act on: answered 0xA900 (Identifier does not match SOP Class)."""


@dataclass
class FindQuery:
    level: str  # PATIENT, STUDY, SERIES or IMAGE
    conditions: list[Condition] = field(default_factory=list)
    returned: list[tuple[int, str]] = field(default_factory=list)  # (tag, keyword) asked for, in order

    @property
    def index_level(self) -> str:
        return LEVELS[self.level]

    def stored_tags(self) -> list[str]:
        """Keys no column holds: read from the stored DICOM JSON (8 hex digits each)."""
        return sorted({f"{tag:08X}" for tag, keyword in self.returned if keyword not in COLUMNS})


def level_of(identifier: Dataset) -> str:
    level = str(_get(identifier, "QueryRetrieveLevel") or "").strip().upper()
    if level not in LEVELS:
        raise BadIdentifier("(0008,0052) Query/Retrieve Level must be PATIENT, STUDY, SERIES or IMAGE")
    return level


def _get(identifier: Dataset, keyword: str):
    try:
        return identifier.get(keyword)
    except Exception:  # a value pydicom cannot convert
        raise BadIdentifier(f"the identifier's {keyword} cannot be read") from None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def find_query(identifier: Dataset) -> FindQuery:
    """The C-FIND request's identifier as a search; BadIdentifier when it cannot be one."""
    query = FindQuery(level_of(identifier))
    try:
        elements = [identifier[tag] for tag in identifier.keys()]
    except Exception:
        raise BadIdentifier("the identifier cannot be decoded") from None
    for element in elements:
        tag = int(element.tag)
        if element.tag in SKIPPED or element.tag.is_private or element.tag.group in (0x0000, 0x0002):
            continue
        keyword = keyword_for_tag(tag) or ""
        query.returned.append((tag, keyword))
        rank = MATCHABLE.get(keyword)
        if rank is None or rank > RANK[query.level] or element.VR == "SQ":
            continue  # a return key only
        try:
            found = condition(keyword, keyword, _text(element.value).strip())
        except BadRequest as exc:
            raise BadIdentifier(exc.detail) from None
        except Exception:
            raise BadIdentifier(f"the identifier's {keyword} cannot be read") from None
        if found is not None:
            query.conditions.append(found)
    return query


def patients(rows: Iterable[dict]) -> list[dict]:
    """Study rows grouped into patients (PS3.4 C.6.1.1.2), with their related-object counts."""
    grouped: dict[tuple, dict] = {}
    for row in rows:
        key = (row.get("patient_id"), row.get("patient_name"))
        found = grouped.setdefault(key, dict(row, patient_studies=0, patient_series=0, patient_instances=0))
        found["patient_studies"] += 1
        found["patient_series"] += row.get("series_count") or 0
        found["patient_instances"] += row.get("study_instance_count") or 0
    return list(grouped.values())


def answer(row: dict, query: FindQuery, ae_title: str) -> Dataset:
    """One C-FIND pending response's identifier: every key asked for, with its value or empty."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # the index holds Unicode text: answered in UTF-8 (PS3.3 C.12.1.1.2)
    ds.QueryRetrieveLevel = query.level
    ds.RetrieveAETitle = ae_title  # (0008,0054): where the match can be retrieved from (PS3.4 C.4.1.2.2)
    for tag, keyword in query.returned:
        column = COLUMNS.get(keyword)
        if column is not None:
            _put(ds, tag, row.get(column[0].lstrip("*")))
            continue
        stored = row.get(f"json:{tag:08X}")
        if stored and "BulkDataURI" not in stored and "InlineBinary" not in stored:
            try:
                ds[tag] = Dataset.from_json({f"{tag:08X}": json.loads(stored)})[tag]
                continue
            except Exception:  # odd stored JSON: returned empty, like a key we do not hold
                pass
        _put(ds, tag, None)
    return ds


def _put(ds: Dataset, tag: int, value) -> None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        vr = "UN"
    if vr in ("US or SS", "OB or OW", "US or OW", "US or SS or OW"):
        vr = vr[:2]
    if value in (None, ""):
        ds.add_new(tag, vr, None)
    elif isinstance(value, str) and "\\" in value:
        ds.add_new(tag, vr, value.split("\\"))
    else:
        ds.add_new(tag, vr, value)


def retrieve_conditions(identifier: Dataset) -> list[Condition]:
    """The instances a C-GET or C-MOVE asks for (PS3.4 C.4.2.2.1, C.4.3.2.1): the unique keys
    (Patient ID, Study, Series and SOP Instance UIDs; lists allowed) of the levels at and above
    the request's. At least one must be given: an empty identifier does not retrieve everything."""
    level = level_of(identifier)
    conditions = []
    for keyword in RETRIEVE_KEYS:
        if MATCHABLE[keyword] > RANK[level]:
            continue
        value = _text(_get(identifier, keyword)).strip()
        if not value:
            continue
        if "*" in value or "?" in value:
            raise BadIdentifier(f"{keyword}: a retrieve names its instances by their unique keys (no wildcards)")
        try:
            found = condition(keyword, keyword, value)
        except BadRequest as exc:
            raise BadIdentifier(exc.detail) from None
        if found is not None:
            conditions.append(found)
    if not conditions:
        raise BadIdentifier("a retrieve needs a unique key: Patient ID, Study, Series or SOP Instance UID")
    return conditions
