"""The pieces of the DICOM JSON model (PS3.18 Annex F) the server uses itself: WADO-RS paths,
stored BulkDataURIs made absolute, one value's JSON form. Plain Python, no pydicom: the
server process never imports it (``dicomsvc.tasks``); ``dicomsvc.dicom.dicomjson``
re-exports them.
"""

import json
import math
from typing import Any
from urllib.parse import quote

INT_VRS = {"IS", "US", "SS", "UL", "SL", "UV", "SV"}
FLOAT_VRS = {"DS", "FL", "FD"}
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def study_path(study: str) -> str:
    """A study's WADO-RS path below the service root (PS3.18 §10.4.1.1: studies/{study}), as
    dicomsvc/http/dicomweb/README-paths.md lays out; so are the two below."""
    return f"/dicomweb/studies/{quote(study, safe='')}"


def series_path(study: str, series: str) -> str:
    return f"{study_path(study)}/series/{quote(series, safe='')}"


def instance_path(study: str, series: str, sop: str) -> str:
    return f"{series_path(study, series)}/instances/{quote(sop, safe='')}"


STORED_BULK = '"BulkDataURI":"/dicomweb/'  # how stored_metadata's text holds a BulkDataURI


def absolute_bulk(base: str) -> str:
    """What ``STORED_BULK`` becomes in an answer: the URI below ``base``, the service's own
    URL as the client reached it (JSON-escaped: it comes from the Host header)."""
    return '"BulkDataURI":' + json.dumps(base)[:-1] + '/dicomweb/'


def _json_value(v: Any, vr: str) -> Any:
    if v is None or v == "":
        return None
    if vr == "PN":
        components = getattr(v, "components", None) or str(v).split("=")
        groups = {name: part for name, part in zip(PN_GROUPS, components) if part}
        return groups or None
    if vr == "AT":
        return f"{int(v):08X}"
    if vr in INT_VRS:
        try:
            return int(v)
        except (TypeError, ValueError):
            return str(v)
    if vr in FLOAT_VRS:
        try:
            number = float(v)
        except (TypeError, ValueError):
            return str(v)
        if math.isfinite(number):
            return number
        return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
    return str(v)


def json_value(v: Any, vr: str) -> Any:
    """One value as the DICOM JSON model writes it (a number, a PN object, text; None if empty)."""
    return _json_value(v, vr)
