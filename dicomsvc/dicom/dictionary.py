"""The DICOM data dictionary (PS3.6 §6, Registry of DICOM Data Elements) without importing pydicom.

The server process answers QIDO-RS (PS3.18 §10.6) with attribute keywords, tags and VRs,
and never imports pydicom (it pulls in numpy: ``dicomsvc.tasks``). pydicom's dictionary is
a module of plain literals, ``pydicom/_dicom_dict.py`` (``DicomDictionary``: tag ->
(VR, VM, name, retired, keyword); ``RepeatersDictionary``: masks such as ``60xx0010``,
PS3.5 §7.6 repeating groups): it is found without importing pydicom and executed on its
own, once, on first use. The answers are ``pydicom.datadict``'s, entry for entry
(tests/test_dictionary.py compares every entry).
"""

import functools
import importlib.util
from pathlib import Path
from typing import NamedTuple


class _Tables(NamedTuple):
    entries: dict[int, tuple[str, str, str, str, str]]
    repeaters: dict[str, tuple[str, str, str, str, str]]
    masks: list[tuple[str, int, int]]  # (mask, bits that must equal, bits that count), in order
    keywords: dict[str, int]


@functools.cache
def _tables() -> _Tables:
    spec = importlib.util.find_spec("pydicom")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pydicom is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "_dicom_dict.py"
    loader_spec = importlib.util.spec_from_file_location("dicomsvc.dicom._pydicom_dictionary", path)
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)  # literals only: no imports (not kept in sys.modules)
    entries, repeaters = module.DicomDictionary, module.RepeatersDictionary
    # as pydicom.datadict.masks: "x" digits are "don't care"
    masks = [
        (mask, int(mask.replace("x", "0"), 16), int("".join("F0"[c == "x"] for c in mask), 16)) for mask in repeaters
    ]
    keywords = {entry[4]: tag for tag, entry in entries.items()}  # as pydicom.datadict.keyword_dict
    return _Tables(entries, repeaters, masks, keywords)


def _entry(tag: int) -> tuple[str, str, str, str, str] | None:
    tables = _tables()
    found = tables.entries.get(tag)
    if found is None and not (tag >> 16) % 2:  # a private tag (odd group) never matches a repeater
        for mask, same, counted in tables.masks:
            if (tag ^ same) & counted == 0:
                return tables.repeaters[mask]
    return found


def keyword_for_tag(tag: int) -> str:
    """The keyword of ``tag`` (repeating groups included), ``""`` when it has none."""
    entry = _entry(tag)
    return entry[4] if entry is not None else ""


def tag_for_keyword(keyword: str) -> int | None:
    """The tag of a keyword of the main dictionary (not of a repeating group's), or None."""
    return _tables().keywords.get(keyword)


def dictionary_VR(tag: int) -> str:  # noqa: N802 (pydicom's name)
    """The VR of ``tag`` in the dictionary; KeyError when it is not there."""
    entry = _entry(tag)
    if entry is None:
        raise KeyError(f"tag {tag:08X} is not in the DICOM dictionary")
    return entry[0]
