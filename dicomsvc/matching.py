"""Matching keys (PS3.4 C.2.2.2) as index conditions: one value of an attribute -> a
``storage.studies.Condition``. The same rules serve QIDO-RS query parameters
(``http/dicomweb/qido.py``, PS3.18 §8.3.4.1) and C-FIND identifiers (``dicomsvc.dimse``)."""

import re

from .dicom.dictionary import dictionary_VR, tag_for_keyword  # pydicom's, not importing it
from .errors import BadRequest
from .storage.studies import Condition

DA_RE = re.compile(r"[0-9]{8}")
TM_RE = re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?")


def _vr(keyword: str) -> str:
    return dictionary_VR(tag_for_keyword(keyword))


def condition(name: str, keyword: str, value: str) -> Condition | None:
    """The condition ``name=value`` asks for; None for universal matching (PS3.4 C.2.2.2.3)."""
    if value in ("", "*"):
        return None
    vr = _vr(keyword)
    if vr in ("DA", "TM"):
        return date_time(name, keyword, value, vr)
    if vr == "IS":
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", value.strip()):
            raise BadRequest(f"{name} must be a whole number")
        return Condition(keyword, "single", (int(value),))
    if vr == "UI" or "\\" in value or (vr == "CS" and "," in value):  # PS3.18 §8.3.4.1: UID lists
        values = tuple(v.strip() for v in re.split(r"[\\,]" if vr in ("UI", "CS") else r"\\", value) if v.strip())
        if not values:
            return None
        return Condition(keyword, "single" if len(values) == 1 else "list", values, fold_case=vr == "PN")
    kind = "wildcard" if "*" in value or "?" in value else "single"
    return Condition(keyword, kind, (value,), fold_case=vr == "PN")


def date_time(name: str, keyword: str, value: str, vr: str) -> Condition:
    """DA (YYYYMMDD) and TM (HHMMSS.FFFFFF, shorter allowed) values and ranges (PS3.4 C.2.2.2.5)."""
    pattern = DA_RE if vr == "DA" else TM_RE
    shape = "YYYYMMDD" if vr == "DA" else "HHMMSS[.FFFFFF]"
    if "-" not in value:
        if not pattern.fullmatch(value.replace(":", "")):
            raise BadRequest(f"{name} must be {shape}, or a range {shape}-{shape} (either end may be open)")
        return Condition(keyword, "single", (value.replace(":", ""),))
    low, _, high = value.partition("-")
    low, high = low.replace(":", "") or None, high.replace(":", "") or None
    if (low is None and high is None) or any(b is not None and not pattern.fullmatch(b) for b in (low, high)):
        raise BadRequest(f"{name} must be {shape}, or a range {shape}-{shape} (either end may be open)")
    if vr == "TM" and high is not None:  # "1200" ends at 12:00:00.000000 (and so takes "120000")
        digits, _, fraction = high.partition(".")
        high = digits.ljust(6, "0") + "." + fraction.ljust(6, "0")
    return Condition(keyword, "range", (low, high))
