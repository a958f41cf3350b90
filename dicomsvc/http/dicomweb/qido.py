"""QIDO-RS (PS3.18 §10.6): the six search resources, their query parameters and their answers.

Resources: ``/studies``, ``/studies/{study}/series``, ``/series``,
``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances``, ``/instances``.

Query parameters (PS3.18 §8.3.4):

* ``{attributeID}={value}``: a keyword (``PatientID``) or tag (``00100020``) of a matching key
  (``storage.studies.MATCHING_KEYS``: PS3.18 Table 10.6.1-5 and a few more) at the
  resource's level or above. Matching per PS3.4 C.2.2.2: single value (exact; PN without
  regard to case), UID list (``\\`` or ``,`` separated), other lists (any value), ``*``/``?``
  wildcards, DA/TM ranges ``low-high`` with either end open; an empty value matches
  everything (universal matching) and only asks for the attribute to be returned.
* ``includefield``: keywords or tags, comma-separated or repeated, or ``all``.
* ``fuzzymatching=true`` is accepted; it is not applied, and ``Warning: 299`` says so.
* ``limit``/``offset``; at most ``DICOMSVC_QIDO_MAX_RESULTS`` a page; when more results
  match than were returned, ``Warning: 299`` says so (PS3.18 §8.3.4.4).

Anything else is a 400 that names the parameter. Answers are ``application/dicom+json``
arrays with the return attributes of Tables 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5
(instance); searches over all series or instances also carry the attributes of the levels
above, as §10.6.3.3 asks. No match is ``200 []``.
"""

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...dicom.dictionary import keyword_for_tag, tag_for_keyword  # pydicom's, not importing it
from ...dicom.webjson import STORED_BULK, absolute_bulk, instance_path, json_value, series_path, study_path
from ...errors import BadRequest
from ...matching import condition as _condition
from ...service import Service
from ...storage import studies
from ...storage.studies import Condition

RESERVED = ("includefield", "fuzzymatching", "limit", "offset")
TAG_RE = re.compile(r"[0-9A-Fa-f]{8}")
WARN_AGENT = "dicomsvc"
FUZZY_WARNING = "The fuzzymatching parameter is not supported. Only literal matching has been performed."
MORE_WARNING = "There are additional results that can be requested."
LEVEL_RANK = {"study": 0, "series": 1, "instance": 2}
PLAIN_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"}  # a value is its text
INLINE_ROWS = 200  # answers with more results are made in an I/O thread


@dataclass
class Query:
    level: str  # what is searched: study, series or instance
    conditions: list[Condition]
    returned: list[str] = field(default_factory=list)  # keywords asked for by match or includefield
    extra_tags: list[str] = field(default_factory=list)  # other tags asked for (from stored JSON)
    include_all: bool = False
    limit: int = 0
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    body: bytes
    warnings: list[str]

    @property
    def headers(self) -> dict[str, str]:
        """``Warning: 299 <agent> "<text>"`` (RFC 7234 §5.5, as PS3.18 §8.3.4 uses it)."""
        if not self.warnings:
            return {}
        return {"Warning": ", ".join(f'299 {WARN_AGENT} "{w}"' for w in self.warnings)}


# Parsing -------------------------------------------------------------------------------------


def _keyword(attribute: str) -> str | None:
    """``PatientID`` or ``00100020`` -> the keyword; None when it names no attribute."""
    if TAG_RE.fullmatch(attribute):
        return keyword_for_tag(int(attribute, 16)) or None
    return attribute if tag_for_keyword(attribute) is not None else None


def _tag_key(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def _positive(name: str, raw: str, low: int) -> int:
    if not re.fullmatch(r"[0-9]{1,15}", raw) or int(raw) < low:
        raise BadRequest(f"{name} must be a whole number from {low} (at most 15 digits)")
    return int(raw)


def _shown(name: str) -> str:
    """A parameter name as an error detail may quote it: short (names only, never values)."""
    return repr(name if len(name) <= 64 else name[:64] + "...")


def parse(items: Sequence[tuple[str, str]], level: str, max_results: int) -> Query:
    """The query string (as (name, value) pairs, repeats kept) of a search at ``level``."""
    query = Query(level, [])
    seen: set[str] = set()
    for name, value in items:
        if name == "includefield":
            _include(query, value)
            continue
        if name in RESERVED:
            if name in seen:
                raise BadRequest(f"{name} is given more than once")
            seen.add(name)
            if name == "fuzzymatching":
                if value.lower() not in ("true", "false"):
                    raise BadRequest("fuzzymatching must be true or false")
                if value.lower() == "true":
                    query.warnings.append(FUZZY_WARNING)
            elif name == "limit":
                query.limit = _positive("limit", value, 1)
            else:
                query.offset = _positive("offset", value, 0)
            continue
        keyword = _keyword(name)
        if keyword is None:
            raise BadRequest(f"unknown query parameter: {_shown(name)} (not a DICOM keyword or tag, nor {', '.join(RESERVED)})")
        key = studies.MATCHING_KEYS.get(keyword)
        if key is None or LEVEL_RANK[key[0]] > LEVEL_RANK[level]:
            raise BadRequest(f"{_shown(name)} is not a matching key for a {level} search")
        if keyword in seen:
            raise BadRequest(f"{_shown(name)} is given more than once")
        seen.add(keyword)
        query.returned.append(keyword)
        condition = _condition(name, keyword, value)
        if condition is not None:
            query.conditions.append(condition)
    if query.limit == 0 or query.limit > max_results:
        query.limit = max_results
    return query


def _include(query: Query, value: str) -> None:
    for item in value.split(","):
        item = item.strip()
        if item == "all":
            query.include_all = True
            continue
        keyword = _keyword(item)
        if keyword is not None:
            query.returned.append(keyword)
        elif TAG_RE.fullmatch(item):  # a private or unknown tag: from the stored JSON, if there
            query.extra_tags.append(item.upper())
        else:
            raise BadRequest(f"includefield: unknown attribute {_shown(item)} (a keyword, an 8-hex-digit tag, or all)")


# Answers -------------------------------------------------------------------------------------

# (keyword, VR, column) returned at each level: PS3.18 Tables 10.6.3-3, -4, -5 (and the UIDs of
# the levels above, which every client needs to go on). "*" columns are made here.
STUDY_RETURN = (
    ("StudyDate", "DA", "study_date"),
    ("StudyTime", "TM", "study_time"),
    ("AccessionNumber", "SH", "accession_number"),
    ("InstanceAvailability", "CS", "*online"),
    ("ModalitiesInStudy", "CS", "*modalities"),
    ("ReferringPhysicianName", "PN", "referring_physician_name"),
    ("TimezoneOffsetFromUTC", "SH", "?study_timezone_offset"),
    ("RetrieveURL", "UR", "*study_url"),
    ("StudyDescription", "LO", "study_description"),
    ("PatientName", "PN", "patient_name"),
    ("PatientID", "LO", "patient_id"),
    ("PatientBirthDate", "DA", "patient_birth_date"),
    ("PatientSex", "CS", "patient_sex"),
    ("StudyInstanceUID", "UI", "study_instance_uid"),
    ("StudyID", "SH", "study_id"),
    ("NumberOfStudyRelatedSeries", "IS", "series_count"),
    ("NumberOfStudyRelatedInstances", "IS", "study_instance_count"),
)
SERIES_RETURN = (
    ("Modality", "CS", "modality"),
    ("SeriesDescription", "LO", "series_description"),
    ("RetrieveURL", "UR", "*series_url"),
    ("StudyInstanceUID", "UI", "study_instance_uid"),
    ("SeriesInstanceUID", "UI", "series_instance_uid"),
    ("SeriesNumber", "IS", "series_number"),
    ("NumberOfSeriesRelatedInstances", "IS", "series_instance_count"),
    ("PerformedProcedureStepStartDate", "DA", "pps_start_date"),
    ("PerformedProcedureStepStartTime", "TM", "pps_start_time"),
)
INSTANCE_RETURN = (
    ("SOPClassUID", "UI", "sop_class_uid"),
    ("SOPInstanceUID", "UI", "sop_instance_uid"),
    ("InstanceAvailability", "CS", "*online"),
    ("TimezoneOffsetFromUTC", "SH", "?timezone_offset"),
    ("RetrieveURL", "UR", "*instance_url"),
    ("StudyInstanceUID", "UI", "study_instance_uid"),
    ("SeriesInstanceUID", "UI", "series_instance_uid"),
    ("InstanceNumber", "IS", "instance_number"),
    ("Rows", "US", "rows"),
    ("Columns", "US", "columns"),
    ("BitsAllocated", "US", "bits_allocated"),
    ("NumberOfFrames", "IS", "?frames"),
)
# includefield=all: the optional keys of PS3.4 C.6.1.1.2 (patient), C.6.1.1.3/C.6.2.1.2 (study)
# and C.6.1.1.4 (series) found in the representative instance; at instance level, everything.
STUDY_ALL = (
    "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientBirthTime", "OtherPatientNames", "EthnicGroup",
    "PatientComments", "PatientSpeciesDescription", "PatientBreedDescription", "ResponsiblePerson",
    "ResponsibleOrganization", "PatientIdentityRemoved", "DeidentificationMethod",
    "IssuerOfAccessionNumberSequence", "ReferringPhysicianIdentificationSequence", "ProcedureCodeSequence",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription", "PatientAge",
    "PatientSize", "PatientWeight", "Occupation", "AdditionalPatientHistory",
)  # fmt: skip
SERIES_ALL = (
    "Laterality", "SeriesDate", "SeriesTime", "PerformingPhysicianName", "ProtocolName",
    "SeriesDescriptionCodeSequence", "OperatorsName", "ReferencedPerformedProcedureStepSequence",
    "RequestAttributesSequence", "PerformedProcedureStepID", "PerformedProcedureStepDescription",
    "BodyPartExamined", "PatientPosition", "AnatomicalOrientationType", "Manufacturer", "InstitutionName",
    "StationName", "ManufacturerModelName", "FrameOfReferenceUID",
)  # fmt: skip


def _tables(level: str) -> list[tuple]:
    """The return attributes of a search at ``level``: its own and the levels' above."""
    return {
        "study": [STUDY_RETURN],
        "series": [STUDY_RETURN, SERIES_RETURN],
        "instance": [STUDY_RETURN, SERIES_RETURN, INSTANCE_RETURN],
    }[level]


def _own_tables(level: str, scope: tuple[str | None, str | None]) -> tuple[tuple, ...]:
    """PS3.18 §10.6.3.3: all series also carry study attributes; a study's instances, series
    attributes; all instances, both. Below a given study or series, only the level's own."""
    study, series = scope
    if level == "study":
        return (STUDY_RETURN,)
    if level == "series":
        return (SERIES_RETURN,) if study else (STUDY_RETURN, SERIES_RETURN)
    if series:
        return (INSTANCE_RETURN,)
    return (SERIES_RETURN, INSTANCE_RETURN) if study else (STUDY_RETURN, SERIES_RETURN, INSTANCE_RETURN)


def _element(vr: str, value: Any) -> dict:
    """A DICOM JSON element (PS3.18 F.2) from a stored column value: numbers as numbers, PN as
    component groups, several values (``\\``-joined) as several; empty: no Value."""
    if value is None or value == "":
        return {"vr": vr}
    if isinstance(value, int):
        return {"vr": vr, "Value": [value]}
    if vr in ("UR", "LT", "ST", "UT") or (vr in PLAIN_VRS and "\\" not in value):  # the common case
        return {"vr": vr, "Value": [value]}
    return {"vr": vr, "Value": [json_value(v, vr) for v in str(value).split("\\")]}


def _attribute(vr: str, column: str, row: dict, base: str) -> dict | None:
    """One return attribute from the row; None when it is to be left out."""
    if column.startswith("?"):  # only when there is a value
        value = row.get(column[1:])
        return None if value in (None, "") else _element(vr, value)
    if column == "*online":  # (0008,0056) Instance Availability: everything stored here is
        return {"vr": vr, "Value": ["ONLINE"]}
    if column == "*modalities":
        return _element(vr, row.get("modalities"))
    if column.startswith("*"):  # (0008,1190) Retrieve URL: the WADO-RS resource
        return {"vr": vr, "Value": [base + _url(row, column[1:])]}
    return _element(vr, row.get(column))


def _served(level: str) -> dict[str, tuple[str, str]]:
    """keyword -> (VR, column) for what a search at ``level`` reads from its rows."""
    return {kw: (vr, col) for table in _tables(level) for kw, vr, col in table}


def _stored(text: str | None, base: str) -> dict | None:
    """An element or object of the stored DICOM JSON, its BulkDataURIs made absolute."""
    return json.loads(text.replace(STORED_BULK, absolute_bulk(base))) if text else None


@functools.lru_cache(maxsize=64)
def _keys(own: tuple[tuple, ...]) -> tuple[tuple[str, str, str], ...]:
    """(JSON key, VR, column) of the return attributes, in key order (computed once)."""
    return tuple(sorted((_tag_key(keyword), vr, column) for table in own for keyword, vr, column in table))


def _result(row: dict, level: str, query: Query, own: tuple[tuple, ...], base: str) -> dict:
    out: dict[str, dict] = {}
    for key, vr, column in _keys(own):
        element = _attribute(vr, column, row, base)
        if element is not None:
            out[key] = element
    if not query.returned and not query.extra_tags and not query.include_all:
        return out  # already in key order
    served = _served(level)
    stored = _stored(row.get("json"), base) or {}
    for keyword in query.returned:  # matched on, or asked for by includefield
        key = _tag_key(keyword)
        if key in out:
            continue
        if keyword in served:
            element = _attribute(*served[keyword], row, base)
        else:
            element = _stored(row.get(f"json:{key}"), base) or stored.get(key)
        if element is not None:
            out[key] = element
    for tag in query.extra_tags:
        found = _stored(row.get(f"json:{tag}"), base)
        if found is not None:
            out[tag] = found
    if query.include_all:
        if level == "instance":
            wanted = stored.keys()
        else:
            wanted = {_tag_key(k) for k in (*STUDY_ALL, *(SERIES_ALL if level == "series" else ()))}
        for key in wanted:
            if key not in out and key in stored:
                out[key] = stored[key]
    return dict(sorted(out.items()))


def _url(row: dict, which: str) -> str:
    if which == "instance_url":
        return instance_path(row["study_instance_uid"], row["series_instance_uid"], row["sop_instance_uid"])
    if which == "series_url":
        return series_path(row["study_instance_uid"], row["series_instance_uid"])
    return study_path(row["study_instance_uid"])


def _stored_keywords(query: Query) -> list[str]:
    """Asked-for keywords that no column holds at this level: read from the stored JSON."""
    served = _served(query.level)
    return [k for k in query.returned if k not in served]


async def search(
    svc: Service,
    items: Sequence[tuple[str, str]],
    level: str,
    base: str,
    study: str | None = None,
    series: str | None = None,
    owner: str | None = None,
) -> Answer:
    """A QIDO-RS search at ``level`` (below ``study``/``series`` when given); ``base`` is the
    service's own URL (for Retrieve URLs); ``owner`` (DICOMSVC_VISIBILITY=own): only what that
    user stored is found."""
    query = parse(items, level, svc.config.qido_max_results)
    conditions = list(query.conditions)
    if study is not None:
        conditions.append(Condition("StudyInstanceUID", "single", (study,)))
    if series is not None:
        conditions.append(Condition("SeriesInstanceUID", "single", (series,)))
    extra = sorted({*query.extra_tags, *(_tag_key(k) for k in _stored_keywords(query))})
    rows = await studies.search(
        svc.db, level, conditions, query.limit + 1, query.offset, extra, whole_json=query.include_all,
        in_study=study is not None, owner=owner,
    )
    warnings = list(query.warnings)
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        warnings.append(MORE_WARNING)
    own = _own_tables(level, (study, series))
    if len(rows) > INLINE_ROWS:  # a long answer: made in a thread, the event loop goes on
        return Answer(await svc.io(_body, rows, level, query, own, base), warnings)
    return Answer(_body(rows, level, query, own, base), warnings)


def _body(rows: list[dict], level: str, query: Query, own: tuple[tuple, ...], base: str) -> bytes:
    results = [_result(row, level, query, own, base) for row in rows]
    return json.dumps(results, separators=(",", ":"), ensure_ascii=False).encode()
