"""Flattening a dataset into the rows ``GET /tags`` serves.

One row per data element, file meta (group 0002) first, then the dataset in
file order, each sequence's items right after the sequence's own row. Rows
inside a sequence item point at their sequence row (``parent``, an index into
the returned list) and carry the 0-based ``item``; the store turns indexes into
row IDs.
"""

from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from .parse import PixelElement

# VRs whose values are bytes: the row says how many, not what.
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


@dataclass(frozen=True, slots=True)
class TagRow:
    tag: int
    vr: str
    keyword: str
    value: str | None
    nbytes: int | None  # for binary values, instead of the value
    parent: int | None  # index of the sequence row this element's item belongs to
    item: int | None

    @property
    def tag_str(self) -> str:
        return format_tag(self.tag)


def format_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def flatten(ds: Dataset, pixel: PixelElement | None = None) -> list[TagRow]:
    """Rows for the file meta, the dataset and (when it was not read) the pixel data."""
    rows: list[TagRow] = []
    little = ds.original_encoding[1] is not False
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        _walk(file_meta, rows, None, None, little)
    _walk(ds, rows, None, None, little)
    if pixel is not None and pixel.offset is not None:
        rows.append(TagRow(pixel.tag, pixel.vr, pixel.keyword, None, pixel.length, None, None))
    return rows


def _walk(ds: Dataset, rows: list[TagRow], parent: int | None, item: int | None, little: bool) -> None:
    for tag in sorted(ds.keys()):
        try:
            elem = ds[tag]
        except Exception:  # a value pydicom cannot convert: keep its place and size
            raw = ds.get_item(tag)
            size = len(raw.value) if isinstance(raw.value, bytes) else None
            rows.append(TagRow(int(tag), _vr(raw.VR), "", None, size, parent, item))
            continue
        vr = _resolve_vr(elem, ds, little)
        if vr == "SQ":
            index = len(rows)
            rows.append(TagRow(int(tag), vr, elem.keyword, None, None, parent, item))
            for i, child in enumerate(elem.value or ()):
                _walk(child, rows, index, i, little)
            continue
        value, nbytes = _value(elem, vr)
        rows.append(TagRow(int(tag), vr, elem.keyword, value, nbytes, parent, item))


def _vr(vr: str | None) -> str:
    """Always two letters: an unresolvable 'US or SS' becomes its first choice."""
    return (vr or "UN")[:2]


def _resolve_vr(elem: DataElement, ds: Dataset, little: bool) -> str:
    if elem.VR and " or " in elem.VR:
        try:
            correct_ambiguous_vr_element(elem, ds, little)
        except Exception:
            pass
    return _vr(elem.VR)


def _value(elem: DataElement, vr: str) -> tuple[str | None, int | None]:
    value = elem.value
    if vr in BINARY_VRS or isinstance(value, (bytes, bytearray)):
        return None, len(value or b"")
    if value is None:
        return "", None
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(_text(v) for v in value), None
    return _text(value), None


def _text(value: object) -> str:
    if isinstance(value, BaseTag):
        return format_tag(int(value))
    if type(value) is float:  # FL/FD; DS values (DSfloat) keep their original string
        return repr(value)
    return str(value)
