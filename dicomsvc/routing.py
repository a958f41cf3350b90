"""Routing rules (DICOMSVC_NETWORK_CONFIG ``rules``, README "Routing rules"): where a newly
stored instance is forwarded, decided from its own attributes in the ingest's worker, so the
forwards are queued in the instance's own transaction (``storage.forwarding.queue``).

Every rule whose ``match`` holds applies, in the file's order (the issue's example: every CT
to ``pacs`` and everything, anonymized, to ``research`` sends a CT to both); a (destination,
anonymize) pair named twice is queued once. ``match`` maps DICOM keywords of top-level data
elements (file meta group 0002 included) to values, all of which must hold; none: everything.
A value matches as a C-FIND matching key does (PS3.4 C.2.2.2): ``*`` any run of characters
and ``?`` any one (C.2.2.2.4 Wild Card Matching), else the whole value (C.2.2.2.1 Single Value
Matching), case-sensitive except for PN values; an attribute with several values (stored
``\\``-joined, PS3.5 §6.4) matches when one of them does; ``*`` alone also matches an absent
attribute (C.2.2.2.3 Universal Matching), any other value never does.

Pure and standard-library only: the workers call it on the rows ``dicomsvc.dicom.tags``
flattened (objects with ``keyword``, ``vr``, ``value`` and ``parent``).
"""

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from .netconfig import Rule


class Element(Protocol):
    keyword: str
    vr: str
    value: str | None
    parent: int | None


def forwards(rules: Sequence[Rule], rows: Iterable[Element]) -> list[tuple[str, bool]]:
    """The (destination, anonymize) pairs the matching rules name, in rule order, each once."""
    if not rules:
        return []
    keys = {key for rule in rules for key, _ in rule.match}
    values = {r.keyword: (r.vr, r.value) for r in rows if r.parent is None and r.keyword in keys}
    chosen = [(rule.to, rule.anonymize) for rule in rules if all(_holds(values.get(k), v) for k, v in rule.match)]
    return list(dict.fromkeys(chosen))


def _holds(element: tuple[str, str | None] | None, wanted: str) -> bool:
    if wanted == "*":
        return True
    if element is None or element[1] is None:
        return False
    vr, value = element
    fold = vr == "PN"
    pattern = _pattern(wanted.lower() if fold else wanted)
    return any(pattern.fullmatch(v.lower() if fold else v) for v in value.split("\\"))


@functools.lru_cache(maxsize=256)
def _pattern(wanted: str) -> re.Pattern:
    """``*`` and ``?`` as PS3.4 C.2.2.2.4 wild cards, everything else literally."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in wanted), re.S)
