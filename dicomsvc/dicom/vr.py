"""Values a client gives for DICOM attributes, checked against their VR (PS3.5 §6.2).

Pure Python, no pydicom: the server checks request fields with it before anything is
spooled to a worker. Each check returns why the value is not valid (naming the rule,
never the value: it may be patient data), or None.
"""

import datetime
import re

# PS3.5 §9.1: components of digits, no leading zero (but "0" itself), at most 64 characters
UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
# PS3.5 Table 6.2-1 CS: upper-case letters, digits, space and underscore, at most 16 characters
CS_RE = re.compile(r"[A-Z0-9 _]*")
# PS3.5 §6.1.3: control characters other than ESC (and, for the text VRs, LF, FF, CR) are not
# allowed in the string VRs PN, LO, SH; the backslash separates values (VM > 1) in all three
CONTROL_RE = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")


def check(vr: str, value: str) -> str | None:
    """Why ``value`` is not one valid value of ``vr`` (VM 1), or None."""
    return _CHECKS[vr](value)


def _length(value: str, limit: int, vr: str) -> str | None:
    if len(value) > limit:
        return f"longer than the {limit} characters {vr} allows (PS3.5 Table 6.2-1)"
    return None


def _text(value: str, limit: int, vr: str) -> str | None:
    if CONTROL_RE.search(value):
        return f"holds control characters, which {vr} does not allow (PS3.5 §6.1.3)"
    if "\\" in value:
        return f"holds a backslash, which separates values and is not allowed in one {vr} value (PS3.5 §6.2)"
    return _length(value, limit, vr)


def _lo(value: str) -> str | None:
    return _text(value, 64, "LO")


def _sh(value: str) -> str | None:
    return _text(value, 16, "SH")


def _pn(value: str) -> str | None:
    """PS3.5 §6.2.1: up to three component groups (alphabetic, ideographic, phonetic) split by
    '=', each at most 64 characters of up to five components split by '^'."""
    problem = _text(value, 3 * 64 + 2, "PN")
    if problem:
        return problem
    groups = value.split("=")
    if len(groups) > 3:
        return "has more than three component groups, the most PN allows (PS3.5 §6.2.1)"
    for group in groups:
        if len(group) > 64:
            return "has a component group longer than the 64 characters PN allows (PS3.5 Table 6.2-1)"
        if group.count("^") > 4:
            return "has more than five components, the most PN allows (PS3.5 §6.2.1)"
    return None


def _shaped(pattern: re.Pattern, shape: str, limit: int, vr: str):
    """A check: the value must match ``pattern`` (else it "is not ``shape``") and fit ``limit``."""

    def check_one(value: str) -> str | None:
        return f"is not {shape}" if not pattern.fullmatch(value) else _length(value, limit, vr)

    return check_one


_cs = _shaped(CS_RE, "a code string: upper-case letters, digits, space and underscore only (PS3.5 Table 6.2-1 CS)", 16, "CS")
_ui = _shaped(UID_RE, "a UID: dot-separated numbers without leading zeros (PS3.5 §9.1)", 64, "UI")


def _da(value: str) -> str | None:
    """PS3.5 Table 6.2-1 DA: YYYYMMDD, a real date."""
    if not re.fullmatch(r"[0-9]{8}", value):
        return "is not a date of the form YYYYMMDD (PS3.5 Table 6.2-1 DA)"
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return "is not a calendar date (PS3.5 Table 6.2-1 DA)"
    return None


_CHECKS = {"LO": _lo, "SH": _sh, "PN": _pn, "CS": _cs, "DA": _da, "UI": _ui}
