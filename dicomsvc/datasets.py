"""Clinical CSVs joined to stored studies (POST /datasets): read, match, store -- in a worker.

``create`` runs as a task in a worker process (``svc.cpu``): it reads the spooled CSV
(``read_table``: encoding and delimiter sniffed, limits checked), finds the key column of the
header (``key_column``), looks the keys up among the stored studies and stores the dataset and
its matched rows (``storage.datasets``). The answer names CSV rows by number only, never by a
value: the header is row 1, the first data row 2, as a spreadsheet numbers them (a quoted cell
holding line breaks is still one row).

The key (``KEYS``) is one of (0010,0020) Patient ID, (0008,0050) Accession Number,
(0020,000D) Study Instance UID. A row is
- matched: its key names stored studies -- all of a patient's (clinical columns of a patient
  apply to each of their studies), the one study of an accession number or a UID;
- unmatched: an empty key cell, or a key no stored study has;
- ambiguous: an accession number of several studies (it is unique only per issuer, PS3.3
  C.7.2.1 Issuer of Accession Number Sequence), or a patient ID whose studies disagree on the
  patient's name or birth date (a Patient ID is unique only per (0010,0021) Issuer of Patient ID);
  nothing is joined;
- a duplicate: a key an earlier row had (the first row with a key is the one joined).

Anonymized (``anonymize=true`` or DICOMSVC_ANONYMIZE=always): the keys are looked up as given
(the original identifiers) and also as the anonymizer's pseudonyms (studies stored anonymized);
what is stored is the pseudonym ``dicom.anonymize`` gives the same patient or study --
``pseudonym(secret, PatientID)`` for a patient, ``new_uid(secret, UID)`` for a study (PS3.15
Annex E: (0020,000D) is replaced, U) -- so the clinical rows stay linked to the anonymized
images and no original identifier is kept. (0008,0050) Accession Number is emptied by the
profile (Z): it has no pseudonym, so its rows keep the anonymized Study Instance UID as key.
Columns that name patients or studies (``IDENTIFYING``) are then dropped from the rows.

``escape_formula`` makes a cell safe to write back out in a CSV (dataset export).
"""

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import shortuuid

from .config import Config
from .errors import BadRequest, TooLarge
from .storage import datasets as rows_store
from .storage import spool
from .storage.sqlite import connection

KEYS = tuple(rows_store.KEY_COLUMNS)  # PatientID, AccessionNumber, StudyInstanceUID
DELIMITERS = ",;\t|"  # comma; semicolon (spreadsheets where ',' is the decimal mark); tab; pipe
SNIFF_CHARS = 64 * 1024  # the sample csv.Sniffer and the consistency check read
SNIFF_ROWS = 200

# Header names that hold a key, compared normalized (``_norm``: lower case, letters and digits only)
ALIASES = {
    "PatientID": {"patientid", "patid", "pid", "mrn", "medicalrecordnumber", "patientnumber", "patientno",
                  "patientidentifier", "00100020"},
    "AccessionNumber": {"accessionnumber", "accession", "accessionno", "accno", "accnumber", "accessionid",
                        "00080050"},
    "StudyInstanceUID": {"studyinstanceuid", "studyuid", "studyinstance", "studyinstanceid", "0020000d"},
}  # fmt: skip
# Anonymized datasets drop these columns too: they would carry the identifiers the pseudonyms replace
IDENTIFYING = set().union(*ALIASES.values()) | {
    "patientname", "patientsname", "name", "fullname", "firstname", "lastname", "surname", "givenname",
    "familyname", "00100010", "patientbirthdate", "patientsbirthdate", "birthdate", "dateofbirth", "dob",
    "00100030",
}  # fmt: skip
_ONE_NUMBER = r"[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?"
_NUMBER = re.compile(rf"{_ONE_NUMBER}(\\{_ONE_NUMBER})*")  # one, or DICOM's '\'-joined values (DS, IS)
_DATA_LIKE = re.compile(r"[+-]?[\d.,:/ -]+|\d[\d.]*")  # numbers, dates, times, UIDs: not column names
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# What a dataset export's manifest gives of each instance to stack its slices (dicomsvc/exports.py):
# (0020,0032), (0020,0037), (0028,0030), (0018,0050), (0028,0010), (0028,0011), (0028,0008), (0020,0013)
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
            "Rows", "Columns", "NumberOfFrames", "InstanceNumber")  # fmt: skip


def _norm(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def is_identifying(column: str) -> bool:
    """Whether a CSV column's name says it holds a patient's or a study's identifier, name or
    birth date (``IDENTIFYING``): anonymized datasets and exports leave such columns out."""
    return _norm(column) in IDENTIFYING


def escape_formula(cell: str) -> str:
    """A cell safe to write into a CSV a spreadsheet opens (OWASP "CSV Injection"): one starting
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with ``'`` so it is
    shown as text, never evaluated. A plain number (``-3``, ``+1.5e3``) or DICOM's backslash-joined
    numbers (an Image Position ``-120.5\\-80\\30``) are left as they are: nothing there can be
    evaluated, and they stay numbers for pandas."""
    if cell.startswith(_FORMULA_START) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


# Reading the CSV --------------------------------------------------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[tuple[int, list[str]]]  # (row number, cells), blank rows left out
    encoding: str
    delimiter: str
    ragged: list[int] = field(default_factory=list)  # rows with cells past the header's columns


def decode(data: bytes) -> tuple[str, str]:
    """The text and the encoding it was read in: a BOM's (UTF-8, UTF-16), else UTF-8, else
    Windows-1252 (what spreadsheets in Western Europe write), else Latin-1 (never fails)."""
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", "replace"), "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise BadRequest("the CSV starts with a UTF-16 byte order mark but is not UTF-16") from None
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1"), "latin-1"


def _consistency(sample: str, delimiter: str) -> tuple[int, int]:
    """How well ``delimiter`` splits ``sample``: (rows with the header's number of cells, that number)."""
    try:
        rows = [r for _, r in zip(range(SNIFF_ROWS), csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)) if r]
    except csv.Error:
        return (0, 0)
    if not rows or len(rows[0]) < 2:
        return (0, 1)
    width = len(rows[0])
    return (sum(len(r) == width for r in rows[1:]), width)


def sniff_delimiter(text: str) -> str:
    """The delimiter: csv.Sniffer's guess on a sample (one of ``DELIMITERS``), kept unless another
    splits the sample's rows into the header's number of cells more consistently; ``,`` when
    nothing splits the header (a one-column CSV)."""
    sample = text[:SNIFF_CHARS]
    if len(text) > SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]  # whole lines only
    scores = {d: _consistency(sample, d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: scores[d])
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    if sniffed in scores and scores[sniffed] >= scores[best]:
        return sniffed
    return best if scores[best][1] > 1 else ","


def read_table(data: bytes, max_rows: int, max_columns: int) -> Table:
    """The header and the rows of a CSV file's bytes (quoted cells may hold delimiters, quotes
    doubled and line breaks). 400 without a header row; 413 past ``max_rows`` data rows or
    ``max_columns`` columns. Short rows are padded with empty cells; cells past the header's
    columns are dropped, their rows listed in ``ragged``."""
    if not data.strip():
        raise BadRequest("the CSV is empty: a header row and data rows are required")
    text, encoding = decode(data)
    delimiter = sniff_delimiter(text)
    csv.field_size_limit(max(len(data), 1024))  # one cell can be the whole file, never more
    if "\x00" in text:  # binary, or UTF-16 without its byte order mark; PostgreSQL's text holds no NUL either
        raise BadRequest("the CSV holds NUL characters: not a text file (UTF-16 needs its byte order mark)")
    # strict: a quote left open to the end of the file, or text after a closing quote, is an error
    # (never a cell silently swallowing the rows after it)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
    numbered = enumerate(_records(reader), 1)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    ragged: list[int] = []
    for number, cells in numbered:
        if header is None:
            if not any(c.strip() for c in cells):
                raise BadRequest("the CSV's first row is empty: it must be the header naming the columns")
            header = _header(cells, max_columns)
            continue
        if not any(c.strip() for c in cells):
            continue  # a blank row: nothing to join (its number still counts)
        if len(rows) >= max_rows:
            raise TooLarge(f"the CSV has more than {max_rows} data rows (DICOMSVC_DATASET_MAX_ROWS)")
        if len(cells) > len(header):
            if any(c.strip() for c in cells[len(header) :]):
                ragged.append(number)
            cells = cells[: len(header)]
        elif len(cells) < len(header):
            cells = cells + [""] * (len(header) - len(cells))
        rows.append((number, cells))
    if header is None:
        raise BadRequest("the CSV is empty: a header row and data rows are required")
    if not rows:
        raise BadRequest("the CSV has a header and no data rows")
    return Table(header, rows, encoding, delimiter, ragged)


def _records(reader) -> Iterator[list[str]]:
    ended = 0  # the line the last whole record ended on
    try:
        for record in reader:
            yield record
            ended = reader.line_num
    except csv.Error as exc:  # a cell past the size limit, an unterminated quote, text after a closing quote
        raise BadRequest(f"the CSV cannot be read: the row starting at line {ended + 1} is malformed ({exc})") from None


def _header(cells: list[str], max_columns: int) -> list[str]:
    names = [c.strip().lstrip("\ufeff") for c in cells]
    while names and not names[-1]:
        names.pop()  # trailing delimiters: no column
    if len(names) > max_columns:
        raise TooLarge(f"the CSV has more than {max_columns} columns (DICOMSVC_DATASET_MAX_COLUMNS)")
    if all(_DATA_LIKE.fullmatch(n) for n in names if n):
        raise BadRequest("the first row looks like data (numbers, dates, UIDs), not a header: a header row naming the columns is required")
    # an unnamed column (pandas writes its index so) is named by its position
    names = [name or f"column {position}" for position, name in enumerate(names, 1)]
    seen: dict[str, int] = {}
    for position, name in enumerate(names, 1):
        if name in seen:
            raise BadRequest(f"columns {seen[name]} and {position} of the header have the same name")
        seen[name] = position
    return names


def key_column(header: list[str], key: str, column: str | None) -> int:
    """The index of the key's column: ``column`` (exactly, else ignoring case, spaces and
    underscores), else the header cell named like the key (its keyword, then ``ALIASES``)."""
    if column is not None:
        if column in header:
            return header.index(column)
        found = [i for i, name in enumerate(header) if _norm(name) == _norm(column)]
        if len(found) == 1:
            return found[0]
        raise BadRequest("the header row has no column named as 'column' says" if not found else
                         "several header columns match 'column' ignoring case and spaces: name it exactly")  # fmt: skip
    if key in header:
        return header.index(key)
    for names in ({_norm(key)}, ALIASES[key]):
        found = [i for i, name in enumerate(header) if _norm(name) in names]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            where = ", ".join(str(i + 1) for i in found)
            raise BadRequest(f"columns {where} of the header could each hold the {key}: name one with 'column'")
    raise BadRequest(
        f"no column of the header row names the {key} (such as {key}, "
        f"{', '.join(sorted(ALIASES[key])[:3])}): the first row must be a header; name the column with 'column'"
    )


# Joining ----------------------------------------------------------------------------------


def _same_patient(studies: list[dict]) -> bool:
    """Whether the studies agree on the patient: no two different non-empty (0010,0010) Patient's
    Names (case and '^' padding aside) or (0010,0030) Patient's Birth Dates."""
    for attr in ("patient_name", "patient_birth_date"):
        values = {str(s[attr]).upper().strip(" ^") for s in studies if s[attr]}
        if len(values) > 1:
            return False
    return True


def join(
    table: Table, kind: str, index: int, found: dict[str, list[dict]], secret: bytes | None
) -> tuple[dict, list[tuple[int, str, list[str]]]]:
    """The summary and the matched rows (row number, stored key, linked study UIDs) of ``table``
    given the studies ``found`` per key; ``secret``: anonymized (pseudonyms stored and matched)."""
    pseudo = _pseudonymizer(kind, secret)
    matched: list[tuple[int, str, list[str]]] = []
    unmatched, ambiguous, duplicates = [], [], []
    first_row: dict[str, int] = {}
    linked: set[str] = set()
    for number, cells in table.rows:
        key = cells[index].strip()
        if not key:
            unmatched.append(number)
            continue
        if key in first_row:
            duplicates.append(number)
            continue
        first_row[key] = number
        originals = found.get(key, [])
        anonymized = found.get(pseudo(key), []) if pseudo is not None and pseudo(key) != key else []
        if pseudo is None:
            candidates = [(s, s["study_instance_uid"]) for s in originals]
        else:  # originals are linked by the UID the anonymizer gives them; anonymized ones by theirs
            candidates = [(s, s["study_instance_uid"] if s["anonymized"] else _uid(secret, s["study_instance_uid"]))
                          for s in originals] + [(s, s["study_instance_uid"]) for s in anonymized]  # fmt: skip
        if not candidates:
            unmatched.append(number)
            continue
        if kind == "AccessionNumber" and len({uid for _, uid in candidates}) > 1:
            ambiguous.append(number)
            continue
        if kind == "PatientID" and not (
            _same_patient([s for s, _ in candidates if not s["anonymized"]])
            and _same_patient([s for s, _ in candidates if s["anonymized"]])
        ):
            ambiguous.append(number)
            continue
        uids = sorted({uid for _, uid in candidates} - linked)
        if not uids:  # every study is another row's already (a key and its own pseudonym both listed)
            duplicates.append(number)
            continue
        linked.update(uids)
        stored = key if pseudo is None else (uids[0] if kind == "AccessionNumber" else pseudo(key))
        matched.append((number, stored, uids))
    summary = {
        "rows": len(table.rows),
        "matched": len(matched),
        "unmatched": unmatched,
        "ambiguous": ambiguous,
        "duplicates": duplicates,
        "ragged": table.ragged,
        "study_count": len(linked),
    }
    return summary, matched


def _uid(secret: bytes, uid: str) -> str:
    from .dicom.anonymize import new_uid

    return new_uid(secret, uid)


def _pseudonymizer(kind: str, secret: bytes | None):
    """key -> the anonymizer's pseudonym of it (None: not anonymized). PatientID: ``pseudonym``;
    StudyInstanceUID: ``new_uid``; AccessionNumber: itself (the profile keeps no value of it)."""
    if secret is None:
        return None
    from .dicom.anonymize import new_uid, pseudonym

    if kind == "PatientID":
        return lambda key: pseudonym(secret, key)
    if kind == "StudyInstanceUID":
        return lambda key: new_uid(secret, key)
    return lambda key: key


# The task -----------------------------------------------------------------------------------


def create(
    config: Config, path: str, key: str, column: str | None, anonymize: bool, owner: str | None, user: str | None
) -> dict:
    """Read the CSV spooled at ``path``, join it to the stored studies (``owner``: only studies
    holding that user's instances) and store it as a dataset uploaded by ``user``; the answer
    of POST /datasets (row numbers, never values)."""
    if key not in KEYS:
        raise BadRequest(f"key must be one of {', '.join(KEYS)}")
    with spool.open_spooled(Path(path), spool.keyring_of(config)) as fh:
        data = fh.read(config.dataset_max_bytes + 1)
    if len(data) > config.dataset_max_bytes:
        raise TooLarge(f"the CSV is larger than {config.dataset_max_bytes} bytes (DICOMSVC_DATASET_MAX_BYTES)")
    table = read_table(data, config.dataset_max_rows, config.dataset_max_columns)
    del data
    index = key_column(table.header, key, column)
    anonymize = anonymize or config.anonymize_always
    secret = config.anon_secret.encode() if anonymize else None
    if anonymize and not secret:
        raise RuntimeError("no anonymization secret")  # the service always sets one
    keys = {cells[index].strip() for _, cells in table.rows} - {""}
    pseudo = _pseudonymizer(key, secret)
    lookup = keys | ({pseudo(k) for k in keys} if pseudo is not None else set())
    writer = connection(config.database)
    found = rows_store.studies_by_key(writer, key, lookup, owner)
    summary, matched = join(table, key, index, found, secret)
    kept = [i for i, name in enumerate(table.header) if i != index and not (anonymize and is_identifying(name))]
    columns = [table.header[i] for i in kept]
    dataset_id = shortuuid.uuid()
    by_number = dict(table.rows)
    stored_rows = []
    for number, stored_key, uids in matched:
        cells = by_number[number]
        clinical = json.dumps({table.header[i]: cells[i] for i in kept}, ensure_ascii=False)
        stored_rows += [(uid, number, stored_key, clinical) for uid in uids]
    summary |= {"encoding": table.encoding, "delimiter": table.delimiter}
    if anonymize:
        summary["dropped_columns"] = [name for i, name in enumerate(table.header) if i != index and i not in kept]
    record = {"id": dataset_id, "key_kind": key, "key_column": table.header[index], "anonymized": anonymize,
              "columns": columns, "summary": summary, "created_by": user}  # fmt: skip
    rows_store.insert(writer, record, stored_rows)
    return {"id": dataset_id, **summary}


LINK_PAGE = 5000  # studies read at a time while looking for an anonymized dataset's originals


def original_links(config: Config, dataset_id: str, owner: str | None) -> dict[str, str]:
    """An anonymized dataset's studies that are stored as they came: their Study Instance UID ->
    the anonymizer's UID of it (``new_uid``) that the dataset's row links, for those not stored
    anonymized as well (that copy is exported instead). Every study stored as it came is looked
    at (one HMAC each): the dataset keeps no original UID to look up. The answer stays in the
    export's memory only (``exports.run``), never stored."""
    secret = config.anon_secret.encode()
    writer = connection(config.database)
    wanted = rows_store.pseudonymous_study_uids(writer, dataset_id)
    wanted -= rows_store.stored_studies(writer, wanted)  # stored anonymized: exported as they are
    links: dict[str, str] = {}
    after = ""
    while wanted and (page := rows_store.studies_as_they_came(writer, after, LINK_PAGE, owner)):
        after = page[-1]
        for uid in page:
            if (anonymized := _uid(secret, uid)) in wanted:
                links[uid] = anonymized
    return links
