"""Studies and series: their rows, kept right on every insert and delete; QIDO-RS and metadata reads.

The ``study`` and ``series`` tables (schema.sql) summarize the ``dicom`` rows: the
attributes of the newest instance (``rep_pk``) and the aggregates DICOMweb returns,
PS3.4 C.3.4: Number of Study Related Series (0020,1206) and Instances (0020,1208),
Number of Series Related Instances (0020,1209), Modalities in Study (0008,0061).
``refresh`` brings them up to date for the (study, series) pairs an insert touched, by what
its new rows add, ``refresh_async`` recomputes them for those a delete touched, inside that
insert's or delete's transaction, so the summaries never disagree with the instances. Study- and series-level queries read only these tables (never scan instances).

This module imports nothing from the rest of the storage package but ``dialect``: ``sqlite``
calls ``backfill`` when it upgrades an older database, ``instances`` calls ``refresh``.

On PostgreSQL, concurrent transactions do not wait for each other as SQLite's writers do: a
refresh would count the instances its snapshot sees and miss those a concurrent insert into the
same study commits meanwhile. So each refresh first takes a transaction-level advisory lock per
study (``STUDY_LOCK``, in UID order: no deadlock), and its statements, which each see what was
committed before they start, count every instance committed by the study's earlier writers.
"""

import json
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the server's side only: worker processes never load asyncio (issue 12: memory)
    import aiosqlite

from .dialect import POSTGRESQL, SQLITE, dialect_of

Pair = tuple[str, str]  # (Study Instance UID, Series Instance UID)
# One instance per SOP Instance UID in a series: the same UID stored again with other pixel
# data (another hash) is a newer version of the instance, and the newest is the one DICOMweb
# shows (as WADO-RS retrieval does); counts count SOP Instance UIDs.
CURRENT = (
    "d.pk = (SELECT MAX(n.pk) FROM dicom n WHERE n.sop_instance_uid = d.sop_instance_uid"
    " AND n.study_instance_uid = d.study_instance_uid AND n.series_instance_uid = d.series_instance_uid)"
)
# Under an owner filter (DICOMSVC_VISIBILITY=own): the newest of that user's versions.
CURRENT_OWNED = CURRENT[:-1] + " AND n.uploaded_by = d.uploaded_by)"
TAG_KEY = re.compile(r"[0-9A-F]{8}")  # a DICOM JSON key (PS3.18 F.2.1.1)


class HasConnection(Protocol):
    """The service's database (``sqlite.Database``): reads go through its connection."""

    conn: "aiosqlite.Connection"


# Keeping the summaries right (one transaction with the insert or delete) ----------------

NEXT_REVISION = {
    SQLITE: "UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value",
    POSTGRESQL: "SELECT nextval('revision_seq')",  # no row lock held until commit
}
STUDY_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))"
_SERIES_ATTRS = ("modality", "series_number", "series_description", "pps_start_date", "pps_start_time")
_STUDY_ATTRS = (
    "patient_id", "patient_name", "patient_birth_date", "patient_sex", "study_date", "study_time",
    "accession_number", "referring_physician_name", "study_id", "study_description", "timezone_offset",
)  # fmt: skip
# The attributes the study and series indexes hold (schema.sql: series_by_modality, study_by_patient,
# study_by_date, study_by_accession). SQLite rewrites an index's entry whenever an UPDATE sets one
# of its columns, even to the value it has: with them in the upserts' SET lists, every ingest wrote
# 4 index pages unchanged (4 of its 33 WAL pages; issue 12). The upserts leave them out and
# ``*_INDEXED`` sets them, only when the representative instance's differ.
_SERIES_INDEXED = ("modality",)
_STUDY_INDEXED = ("patient_id", "study_date", "study_time", "accession_number")
_DIFFERS = {SQLITE: "{a} IS NOT {b}", POSTGRESQL: "{a} IS DISTINCT FROM {b}"}  # NULL-safe


def _set_indexed(table: str, columns: Sequence[str], where: str) -> dict[str, str]:
    """UPDATE of ``table``'s indexed ``columns`` from its representative instance (``rep_pk``),
    on the rows ``where`` selects whose values differ from it (no other row is written)."""
    assigned = ", ".join(f"{c} = d.{c}" for c in columns)
    return {
        dialect: f"UPDATE {table} SET {assigned}\nFROM dicom d WHERE {where} AND d.pk = {table}.rep_pk\n    AND ("
        + " OR ".join(differs.format(a=f"{table}.{c}", b=f"d.{c}") for c in columns)
        + ")"
        for dialect, differs in _DIFFERS.items()
    }


SERIES_INDEXED = _set_indexed(
    "series", _SERIES_INDEXED, "series.study_instance_uid = :study AND series.series_instance_uid = :series"
)
STUDY_INDEXED = _set_indexed("study", _STUDY_INDEXED, "study.study_instance_uid = :study")
SERIES_DELETE = """
DELETE FROM series WHERE study_instance_uid = :study AND series_instance_uid = :series
    AND NOT EXISTS (SELECT 1 FROM dicom WHERE study_instance_uid = :study AND series_instance_uid = :series)
"""
_SERIES_UPSERT = f"""
INSERT INTO series (study_instance_uid, series_instance_uid, rep_pk, {", ".join(_SERIES_ATTRS)},
                    instance_count, revision)
SELECT d.study_instance_uid, d.series_instance_uid, d.pk, {", ".join("d." + c for c in _SERIES_ATTRS)},
       {{count}},
       :revision
FROM dicom d WHERE d.study_instance_uid = :study AND d.series_instance_uid = :series
ORDER BY d.pk DESC LIMIT 1
ON CONFLICT (study_instance_uid, series_instance_uid) DO UPDATE SET
    rep_pk = excluded.rep_pk, {", ".join(f"{c} = excluded.{c}" for c in _SERIES_ATTRS if c not in _SERIES_INDEXED)},
    instance_count = excluded.instance_count, revision = excluded.revision
"""
# The series' instances counted (after a delete, and by ``backfill``)
SERIES_UPSERT = _SERIES_UPSERT.replace("{count}", """(SELECT COUNT(DISTINCT c.sop_instance_uid) FROM dicom c
        WHERE c.study_instance_uid = :study AND c.series_instance_uid = :series)""")
# After an insert (``refresh``): the count grows by the SOP Instance UIDs of the pair's new rows
# (``:fresh``, their pks) that no other row of the series has -- an index probe per new row. A
# recount reads every instance of the series, on each insert: a refresh took 0.5 ms CPU at 1,000
# instances in a series and 1.3-1.5 ms at 3,000, now 0.25-0.3 ms (issue 12).
_FRESH = {SQLITE: "{pk} IN (SELECT value FROM json_each(:fresh))", POSTGRESQL: "{pk} = ANY(:fresh)"}
_NOT_FRESH = {SQLITE: "{pk} NOT IN (SELECT value FROM json_each(:fresh))", POSTGRESQL: "{pk} <> ALL(:fresh)"}
_ADDED_SOPS = """(SELECT COUNT(DISTINCT f.sop_instance_uid) FROM dicom f WHERE {fresh} AND NOT EXISTS (
            SELECT 1 FROM dicom o WHERE o.study_instance_uid = :study AND o.series_instance_uid = :series
            AND o.sop_instance_uid = f.sop_instance_uid AND {not_fresh}))"""
_SERIES_COUNT = "(SELECT c.instance_count FROM series c WHERE c.study_instance_uid = :study AND c.series_instance_uid = :series)"
SERIES_INSERTED = {
    dialect: _SERIES_UPSERT.replace(
        "{count}",
        f"COALESCE({_SERIES_COUNT}, 0)\n       + "
        + _ADDED_SOPS.format(fresh=_FRESH[dialect].format(pk="f.pk"), not_fresh=_NOT_FRESH[dialect].format(pk="o.pk")),
    )
    for dialect in (SQLITE, POSTGRESQL)
}
STUDY_DELETE = """
DELETE FROM study WHERE study_instance_uid = :study
    AND NOT EXISTS (SELECT 1 FROM series WHERE study_instance_uid = :study)
"""
# (0008,0061) Modalities in Study: the distinct values, sorted, '\'-joined
MODALITIES = {
    SQLITE: """(SELECT group_concat(m, '\\') FROM (
            SELECT DISTINCT modality AS m FROM series WHERE study_instance_uid = :study AND modality != ''
            ORDER BY m))""",
    POSTGRESQL: """(SELECT string_agg(DISTINCT modality, '\\' ORDER BY modality) FROM series
            WHERE study_instance_uid = :study AND modality != '')""",
}
_STUDY_UPSERT = f"""
INSERT INTO study (study_instance_uid, rep_pk, {", ".join(_STUDY_ATTRS)},
                   modalities, series_count, instance_count, revision)
SELECT d.study_instance_uid, d.pk, {", ".join("d." + c for c in _STUDY_ATTRS)},
       {{modalities}},
       s.n, s.total, :revision
FROM (SELECT MAX(rep_pk) AS rep, COUNT(*) AS n, CAST(SUM(instance_count) AS INTEGER) AS total
      FROM series WHERE study_instance_uid = :study) AS s
JOIN dicom d ON d.pk = s.rep
WHERE s.rep IS NOT NULL
ON CONFLICT (study_instance_uid) DO UPDATE SET
    rep_pk = excluded.rep_pk, {", ".join(f"{c} = excluded.{c}" for c in _STUDY_ATTRS if c not in _STUDY_INDEXED)},
    modalities = excluded.modalities, series_count = excluded.series_count,
    instance_count = excluded.instance_count, revision = excluded.revision
"""
STUDY_UPSERT = {dialect: _STUDY_UPSERT.replace("{modalities}", m) for dialect, m in MODALITIES.items()}


def pairs_of(rows: Iterable[Any]) -> list[Pair]:
    """The distinct (study, series) pairs of instance rows that have both UIDs (only those are
    studies and series; an instance without them cannot be addressed in DICOMweb)."""
    found = {(r["study_instance_uid"], r["series_instance_uid"]) for r in rows}
    return sorted((st, se) for st, se in found if st and se)


def fresh_pairs(rows: Iterable[tuple[Any, int]]) -> dict[Pair, list[int]]:
    """(instance row, its pk) of new rows -> their pks by (study, series) pair (as ``pairs_of``)."""
    found: dict[Pair, list[int]] = {}
    for row, pk in rows:
        for pair in pairs_of([row]):
            found.setdefault(pair, []).append(pk)
    return found


def _locks(pairs: Sequence[Pair], dialect: str) -> list[tuple[str, tuple]]:
    if dialect != POSTGRESQL:
        return []  # SQLite's writers are serialized already
    return [(STUDY_LOCK, (study,)) for study in sorted({study for study, _ in pairs})]


def _steps(
    pairs: Sequence[Pair], revision: int, dialect: str, fresh: Mapping[Pair, Sequence[int]] | None = None
) -> list[tuple[str, dict]]:
    """The statements that recompute ``pairs``. ``fresh`` after an insert: each pair's new rows'
    pks. Then no DELETE (every pair has an instance: it would find nothing) and the series'
    counts are brought up by what the new rows add (SERIES_INSERTED)."""
    steps = []
    for study, series in pairs:
        params = {"study": study, "series": series, "revision": revision}
        if fresh is None:
            steps += [(SERIES_DELETE, params), (SERIES_UPSERT, params)]
        else:
            pks = list(fresh[(study, series)])
            steps.append((SERIES_INSERTED[dialect], params | {"fresh": json.dumps(pks) if dialect == SQLITE else pks}))
        steps.append((SERIES_INDEXED[dialect], params))
    for study in sorted({study for study, _ in pairs}):
        params = {"study": study, "revision": revision}
        steps += ([(STUDY_DELETE, params)] if fresh is None else []) + [(STUDY_UPSERT[dialect], params)]
        steps.append((STUDY_INDEXED[dialect], params))
    return steps


def refresh(db: sqlite3.Connection, fresh: Mapping[Pair, Sequence[int]]) -> None:
    """Bring the series and study rows up to date after an insert (in the caller's transaction):
    ``fresh``, the pks of the rows inserted, by (study, series) pair (``fresh_pairs``)."""
    pairs = sorted(fresh)
    if not pairs:
        return
    dialect = dialect_of(db)
    for sql, lock in _locks(pairs, dialect):
        db.execute(sql, lock)
    (revision,) = db.execute(NEXT_REVISION[dialect]).fetchone()
    for sql, params in _steps(pairs, revision, dialect, fresh):
        db.execute(sql, params)


async def refresh_async(conn: "aiosqlite.Connection", pairs: Sequence[Pair]) -> None:
    """``refresh`` on the service's connection (in the caller's transaction)."""
    if not pairs:
        return
    dialect = dialect_of(conn)
    for sql, lock in _locks(pairs, dialect):
        await conn.execute(sql, lock)
    ((revision,),) = await conn.execute_fetchall(NEXT_REVISION[dialect])
    for sql, params in _steps(pairs, revision, dialect):
        await conn.execute(sql, params)


# Upgrading a database made before studies and series existed ------------------------------

# Columns of ``dicom`` added for DICOMweb, and the tag each is read from (top level only)
ADDED_FROM_TAGS = {
    "study_time": (0x00080030, "text"),
    "study_id": (0x00200010, "text"),
    "referring_physician_name": (0x00080090, "text"),
    "timezone_offset": (0x00080201, "text"),
    "series_number": (0x00200011, "int"),
    "series_description": (0x0008103E, "text"),
    "pps_start_date": (0x00400244, "text"),
    "pps_start_time": (0x00400245, "text"),
    "instance_number": (0x00200013, "int"),
}


def _pivot(column: str, tag: int, kind: str) -> str:
    value = f"MAX(CASE WHEN t.tag = {tag} THEN dt.value END)"
    if kind == "int":  # as ingest reads IS: a whole number or nothing
        value = f"CASE WHEN trim({value}) GLOB '[0-9]*' OR trim({value}) GLOB '-[0-9]*' THEN CAST(trim({value}) AS INTEGER) END"
    return f"{value} AS {column}"


BACKFILL_COLUMNS = f"""
UPDATE dicom SET {", ".join(f"{c} = v.{c}" for c in ADDED_FROM_TAGS)}
FROM (
    SELECT dt.dicom_pk AS pk, {", ".join(_pivot(c, tag, kind) for c, (tag, kind) in ADDED_FROM_TAGS.items())}
    FROM dicom_tag dt JOIN tag t ON t.id = dt.tag_id
    WHERE dt.parent_id IS NULL AND t.tag IN ({", ".join(str(tag) for tag, _ in ADDED_FROM_TAGS.values())})
    GROUP BY dt.dicom_pk
) AS v
WHERE dicom.pk = v.pk
"""
ALL_PAIRS = """
SELECT DISTINCT study_instance_uid, series_instance_uid FROM dicom
WHERE study_instance_uid != '' AND series_instance_uid != ''
"""


async def backfill(conn: "aiosqlite.Connection") -> None:
    """Bring instances stored before DICOMweb up to date (in the caller's transaction): the new
    ``dicom`` columns from the stored tag rows, then every study and series row. (Instances
    stored before ``dicom_json`` existed get their DICOM JSON on first request.)"""
    await conn.execute(BACKFILL_COLUMNS)
    pairs = [(r[0], r[1]) for r in await conn.execute_fetchall(ALL_PAIRS)]
    await refresh_async(conn, pairs)


# QIDO-RS (PS3.18 §10.6): matching keys -> columns; one query per search -----------------------

LEVELS = ("study", "series", "instance")
# Matching keys (PS3.18 Table 10.6.1-5, plus PatientBirthDate, PatientSex, StudyDescription,
# SeriesDescription): DICOM keyword -> (level, column). ModalitiesInStudy is matched against
# the study's series.
MATCHING_KEYS = {
    "StudyInstanceUID": ("study", "st.study_instance_uid"),
    "PatientID": ("study", "st.patient_id"),
    "PatientName": ("study", "st.patient_name"),
    "PatientBirthDate": ("study", "st.patient_birth_date"),
    "PatientSex": ("study", "st.patient_sex"),
    "StudyDate": ("study", "st.study_date"),
    "StudyTime": ("study", "st.study_time"),
    "AccessionNumber": ("study", "st.accession_number"),
    "ReferringPhysicianName": ("study", "st.referring_physician_name"),
    "StudyID": ("study", "st.study_id"),
    "StudyDescription": ("study", "st.study_description"),
    "ModalitiesInStudy": ("study", "m.modality"),
    "SeriesInstanceUID": ("series", "se.series_instance_uid"),
    "Modality": ("series", "se.modality"),
    "SeriesNumber": ("series", "se.series_number"),
    "SeriesDescription": ("series", "se.series_description"),
    "PerformedProcedureStepStartDate": ("series", "se.pps_start_date"),
    "PerformedProcedureStepStartTime": ("series", "se.pps_start_time"),
    "SOPInstanceUID": ("instance", "d.sop_instance_uid"),
    "SOPClassUID": ("instance", "d.sop_class_uid"),
    "InstanceNumber": ("instance", "d.instance_number"),
}


@dataclass(frozen=True)
class Condition:
    """One matching key (PS3.4 C.2.2.2), already parsed and checked.

    ``kind``: ``single`` (``values`` = (value,)), ``list`` (UID list, or several values any of
    which may match), ``wildcard`` (``values`` = (pattern,) with ``*`` and ``?``), ``range``
    (``values`` = (low, high), either None for an open end). ``fold_case``: compare without
    regard to case (PN).
    """

    keyword: str
    kind: str
    values: tuple
    fold_case: bool = False


_STUDY_COLUMNS = (
    "st.study_instance_uid", "st.patient_id", "st.patient_name", "st.patient_birth_date", "st.patient_sex",
    "st.study_date", "st.study_time", "st.accession_number", "st.referring_physician_name", "st.study_id",
    "st.study_description", "st.timezone_offset AS study_timezone_offset", "st.modalities",
    "st.series_count", "st.instance_count AS study_instance_count", "st.rep_pk AS study_rep",
)  # fmt: skip
_SERIES_COLUMNS = (
    "se.series_instance_uid", "se.modality", "se.series_number", "se.series_description", "se.pps_start_date",
    "se.pps_start_time", "se.instance_count AS series_instance_count", "se.rep_pk AS series_rep",
)  # fmt: skip
_INSTANCE_COLUMNS = (
    "d.pk", "d.sop_class_uid", "d.sop_instance_uid", "d.instance_number", "d.rows", "d.columns",
    "d.bits_allocated", "d.frames", "d.timezone_offset",
    "d.id", "d.dcm_blob", "d.transfer_syntax_uid",  # C-GET / C-MOVE read the stored instance (dicomsvc.dimse)
)  # fmt: skip
_FROM = {
    "study": "study st",
    "series": "series se JOIN study st ON st.study_instance_uid = se.study_instance_uid",
    "instance": "dicom d JOIN series se ON se.study_instance_uid = d.study_instance_uid"
    " AND se.series_instance_uid = d.series_instance_uid"
    " JOIN study st ON st.study_instance_uid = d.study_instance_uid",
}
_ORDER = {  # within a study: series and instances in their numbers' order (none first, as SQLite sorts NULL)
    "study": "st.pk DESC",
    "series": "se.series_number NULLS FIRST, se.pk",
    "instance": "se.series_number NULLS FIRST, se.pk, d.instance_number NULLS FIRST, d.pk",
}
_ORDER_ALL = {  # across studies: newest first, by the row id (no sort of everything)
    "study": "st.pk DESC",
    "series": "se.pk DESC",
    "instance": "d.pk DESC",
}
_REP = {"study": "st.rep_pk", "series": "se.rep_pk", "instance": "d.pk"}
# One member of the stored DICOM JSON, as JSON text (None when absent)
_JSON_MEMBER = {
    SQLITE: """j.metadata -> '$."{tag}"' AS "json:{tag}\"""",
    POSTGRESQL: """(j.metadata::json -> '{tag}')::text AS "json:{tag}\"""",
}

# Under an owner filter (DICOMSVC_VISIBILITY=own) a study or series is found when the owner stored
# an instance of it, and its counts, modalities and representative instance (whose stored JSON
# answers includefield) are the owner's alone -- correlated subqueries on the index dicom_uploaded_by
# (owner, study, series), over the owner's instances of that one study or series. Each holds one
# "?" for the owner. (Its study- and series-level attributes are the study's and series' rows'.)
_IN_STUDY = "FROM dicom o WHERE o.uploaded_by = ? AND o.study_instance_uid = st.study_instance_uid"
_IN_SERIES = (
    "FROM dicom o WHERE o.uploaded_by = ? AND o.study_instance_uid = se.study_instance_uid"
    " AND o.series_instance_uid = se.series_instance_uid"
)
_OWNED_MODALITIES = {
    SQLITE: f"(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT o.modality AS m {_IN_STUDY}"
    " AND o.modality != '' ORDER BY m)) AS modalities",
    POSTGRESQL: f"(SELECT string_agg(DISTINCT o.modality, '\\' ORDER BY o.modality) {_IN_STUDY}"
    " AND o.modality != '') AS modalities",
}
_OWNED_COLUMNS = {
    "st.series_count": f"(SELECT COUNT(DISTINCT o.series_instance_uid) {_IN_STUDY}) AS series_count",
    "st.instance_count AS study_instance_count": f"(SELECT COUNT(DISTINCT o.sop_instance_uid) {_IN_STUDY})"
    " AS study_instance_count",
    "st.rep_pk AS study_rep": f"(SELECT MAX(o.pk) {_IN_STUDY}) AS study_rep",
    "se.instance_count AS series_instance_count": f"(SELECT COUNT(DISTINCT o.sop_instance_uid) {_IN_SERIES})"
    " AS series_instance_count",
    "se.rep_pk AS series_rep": f"(SELECT MAX(o.pk) {_IN_SERIES}) AS series_rep",
}
_OWNED_REP = {"study": f"(SELECT MAX(o.pk) {_IN_STUDY})", "series": f"(SELECT MAX(o.pk) {_IN_SERIES})"}
_OWNED_WHERE = {"study": f"EXISTS (SELECT 1 {_IN_STUDY})", "series": f"EXISTS (SELECT 1 {_IN_SERIES})"}


def _glob(pattern: str) -> str:
    """A DICOM wildcard pattern (PS3.4 C.2.2.2.4: ``*`` any run, ``?`` one character) as a GLOB:
    the only other GLOB metacharacter, ``[``, is matched literally."""
    return pattern.replace("[", "[[]")


def _like(pattern: str) -> str:
    """The same pattern as a PostgreSQL LIKE (case-sensitive, as GLOB) with ``\\`` escaping
    LIKE's own ``%``, ``_`` and ``\\``."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


# Per dialect: a value in a list given as one parameter (no bound-variable limit), a wildcard match
_IN_LIST = {SQLITE: "{column} IN (SELECT value FROM json_each(?))", POSTGRESQL: "{column} = ANY(?)"}
_WILDCARD = {SQLITE: "{column} GLOB ?", POSTGRESQL: "{column} LIKE ? ESCAPE '\\'"}


def _condition(c: Condition, dialect: str = SQLITE) -> tuple[str, list]:
    column = MATCHING_KEYS[c.keyword][1]
    if c.fold_case:
        column = f"lower({column})"
    fold = (lambda v: v.lower()) if c.fold_case else (lambda v: v)
    if c.kind == "single":
        sql, params = f"{column} = ?", [fold(c.values[0]) if isinstance(c.values[0], str) else c.values[0]]
    elif c.kind == "list":  # one parameter, however long the list (no bound-variable limit)
        values = [fold(v) for v in c.values]
        sql, params = _IN_LIST[dialect].format(column=column), [json.dumps(values) if dialect == SQLITE else values]
    elif c.kind == "wildcard":
        pattern = _glob(c.values[0]) if dialect == SQLITE else _like(c.values[0])
        sql, params = _WILDCARD[dialect].format(column=column), [fold(pattern)]
    elif c.kind == "range":  # PS3.4 C.2.2.2.5: inclusive; an empty value never matches a range
        low, high = c.values
        clauses, params = [f"{column} != ''"], []
        if low is not None:
            clauses.append(f"{column} >= ?")
            params.append(low)
        if high is not None:
            clauses.append(f"{column} <= ?")
            params.append(high)
        sql = " AND ".join(clauses)
    else:
        raise ValueError(c.kind)
    if c.keyword == "ModalitiesInStudy":  # any series of the study
        sql = f"EXISTS (SELECT 1 FROM series m WHERE m.study_instance_uid = st.study_instance_uid AND {sql})"
    return sql, params


async def search(
    db: HasConnection,
    level: str,
    conditions: Sequence[Condition],
    limit: int,
    offset: int,
    extra_tags: Sequence[str] = (),
    whole_json: bool = False,
    in_study: bool = False,
    owner: str | None = None,
) -> list[dict]:
    """Studies, series or instances (``level``) matching every condition: at most ``limit``,
    after skipping ``offset``. Each row has the columns the answer needs; ``extra_tags``
    (8-hex-digit keys) come from the DICOM JSON of the row's representative instance as
    ``json:<tag>`` (JSON text, or None), and ``whole_json`` adds that JSON whole as ``json``.
    Studies come newest first; ``in_study`` (a search within one study) orders series and
    instances by their numbers, otherwise they come newest first too. ``owner``: only what that
    user stored is found, and counted.
    """
    if not all(TAG_KEY.fullmatch(tag) for tag in extra_tags):
        raise ValueError("extra_tags must be 8 upper-case hex digits")
    columns = list(_STUDY_COLUMNS)
    if level in ("series", "instance"):
        columns += _SERIES_COLUMNS
    if level == "instance":
        columns += _INSTANCE_COLUMNS
    head: list = []  # parameters of the columns and joins, which come before the WHERE
    dialect = dialect_of(db.conn)
    if owner is not None:
        owned = _OWNED_COLUMNS | {"st.modalities": _OWNED_MODALITIES[dialect]}
        columns = [owned.get(c, c) for c in columns]
        head = [owner] * sum(c.count("o.uploaded_by = ?") for c in columns)
    if extra_tags or whole_json:
        rep = _REP[level] if owner is None or level == "instance" else _OWNED_REP[level]
        joins = f" LEFT JOIN dicom_json j ON j.dicom_pk = {rep}"
        head += [owner] * rep.count("?")
        columns += [_JSON_MEMBER[dialect].format(tag=tag) for tag in extra_tags]
        if whole_json:
            columns.append("j.metadata AS json")
    else:
        joins = ""
    clauses, params = [], []
    for c in conditions:
        sql, more = _condition(c, dialect)
        clauses.append(sql)
        params += more
    if level == "instance":
        clauses.append(CURRENT if owner is None else CURRENT_OWNED)
        if owner is not None:
            clauses.append("d.uploaded_by = ?")
            params.append(owner)
    elif owner is not None:
        clauses.append(_OWNED_WHERE[level])
        params.append(owner)
    where = " AND ".join(clauses) or "TRUE"
    rows = await db.conn.execute_fetchall(
        f"SELECT {', '.join(columns)} FROM {_FROM[level]}{joins} WHERE {where} "
        f"ORDER BY {(_ORDER if in_study else _ORDER_ALL)[level]} LIMIT ? OFFSET ?",
        (*head, *params, limit, offset),
    )
    return [dict(r) for r in rows]


# WADO-RS metadata (PS3.18 §10.4.1.1.2): the DICOM JSON stored at ingest, a page at a time ------

Scope = tuple[str, str | None, str | None]  # (study, series or None, SOP instance or None)


def _scope(scope: Scope, owner: str | None = None) -> tuple[str, list]:
    study, series, sop = scope
    clauses, params = ["d.study_instance_uid = ?", "d.series_instance_uid != ''"], [study]
    if owner is None:
        clauses.append(CURRENT)
    else:  # only the owner's instances, the newest of their versions
        clauses += ["d.uploaded_by = ?", CURRENT_OWNED]
        params.append(owner)
    if series is not None:
        clauses.append("d.series_instance_uid = ?")
        params.append(series)
    if sop is not None:
        clauses.append("d.sop_instance_uid = ?")
        params.append(sop)
    return " AND ".join(clauses), params


async def version(db: HasConnection, scope: Scope, owner: str | None = None) -> int | None:
    """What changes whenever the metadata of ``scope`` does (the study's or series' revision,
    the instance's row); None when there is no such study, series or instance (``owner``: of
    that user's)."""
    study, series, sop = scope
    if owner is not None:
        where, params = _scope(scope, owner)
        found = await db.conn.execute_fetchall(f"SELECT 1 FROM dicom d WHERE {where} LIMIT 1", params)
        if not found:
            return None
    if sop is not None:
        where, params = _scope(scope, owner)
        rows = await db.conn.execute_fetchall(f"SELECT d.pk FROM dicom d WHERE {where}", params)
    elif series is not None:
        rows = await db.conn.execute_fetchall(
            "SELECT revision FROM series WHERE study_instance_uid = ? AND series_instance_uid = ?", (study, series)
        )
    else:
        rows = await db.conn.execute_fetchall("SELECT revision FROM study WHERE study_instance_uid = ?", (study,))
    return rows[0][0] if rows else None


async def metadata_page(
    db: HasConnection, scope: Scope, uri_from: str, uri_to: str, limit: int, offset: int, owner: str | None = None
) -> tuple[int, int, str | None]:
    """One page of the stored DICOM JSON objects of ``scope``, in series and instance-number order,
    comma-joined by SQLite with ``uri_from`` replaced by ``uri_to`` (relative BulkDataURIs made
    absolute): (instances on the page, how many of them have stored JSON, the text)."""
    where, params = _scope(scope, owner)
    sql = METADATA_PAGE[dialect_of(db.conn)].replace("{where}", where)
    ((count, have, text),) = await db.conn.execute_fetchall(sql, (uri_from, uri_to, *params, limit, offset))
    return count, have, text


_PAGE_ORDER = "d.series_number NULLS FIRST, d.series_instance_uid NULLS FIRST, d.instance_number NULLS FIRST, d.pk"
METADATA_PAGE = {
    SQLITE: f"""
        SELECT COUNT(*), COUNT(metadata), group_concat(replace(metadata, ?, ?), ',') FROM (
            SELECT j.metadata FROM dicom d LEFT JOIN dicom_json j ON j.dicom_pk = d.pk
            WHERE {{where}} ORDER BY {_PAGE_ORDER} LIMIT ? OFFSET ?
        )
        """,
    # string_agg's order is its own ORDER BY's: the page's row number
    POSTGRESQL: f"""
        SELECT COUNT(*), COUNT(metadata), string_agg(replace(metadata, ?, ?), ',' ORDER BY n) FROM (
            SELECT j.metadata, row_number() OVER (ORDER BY {_PAGE_ORDER}) AS n
            FROM dicom d LEFT JOIN dicom_json j ON j.dicom_pk = d.pk
            WHERE {{where}} ORDER BY {_PAGE_ORDER} LIMIT ? OFFSET ?
        ) AS page
        """,
}


async def without_metadata(db: HasConnection, scope: Scope, owner: str | None = None) -> list[dict]:
    """The instances of ``scope`` without stored DICOM JSON (stored before it was kept)."""
    where, params = _scope(scope, owner)
    rows = await db.conn.execute_fetchall(
        f"SELECT d.pk, d.dcm_blob, d.study_instance_uid, d.series_instance_uid, d.sop_instance_uid "
        f"FROM dicom d LEFT JOIN dicom_json j ON j.dicom_pk = d.pk WHERE {where} AND j.dicom_pk IS NULL",
        params,
    )
    return [dict(r) for r in rows]
