"""Flattening a dataset into the rows ``GET /tags`` serves.

One row per data element, file meta (group 0002) first, then the dataset in
file order, each sequence's items right after the sequence's own row. Rows
inside a sequence item point at their sequence row (``parent``, an index into
the returned list) and carry the 0-based ``item``; the store turns indexes into
row IDs.

Converting every element through pydicom's ``Dataset.__getitem__`` costs about
20 µs an element, the largest single cost of an ingest; so elements still in
their raw form, with a plain character set, are turned into text straight from
their bytes (``_fast_value``), and everything else goes through pydicom. The
tests check that both paths give the same rows for every file pydicom ships.
"""

import struct
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from .parse import KNOWN_VRS, PixelElement

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


# Character sets whose text decodes with one Python codec, no escape sequences.
DEFAULT_CODEC = "iso8859"  # what pydicom decodes with when no character set is given
PLAIN_CHARSETS = {"": DEFAULT_CODEC, "ISO_IR 6": DEFAULT_CODEC, "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
# VRs in the default repertoire whatever the character set; then those that use it.
DEFAULT_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}
CHARSET_TEXT_VRS = {"LO", "SH", "UC"}  # PN goes through pydicom (component groups)
UNSPLIT_TEXT_VRS = {"LT", "ST", "UT", "UR"}  # one value, backslashes and all
# struct codes and sizes of the binary number VRs
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}


def flatten(ds: Dataset, pixel: PixelElement | None = None, fast: bool = True) -> list[TagRow]:
    """Rows for the file meta, the dataset and (when it was not read) the pixel data,
    which takes its place by tag among the dataset's elements.

    ``fast=False`` converts every element through pydicom (the tests compare both).
    """
    rows: list[TagRow] = []
    little = ds.original_encoding[1] is not False
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        _walk(file_meta, rows, None, None, True, DEFAULT_CODEC if fast else None)
    codec = _charset(ds, DEFAULT_CODEC) if fast else None
    tags = sorted(ds.keys())
    if pixel is None or pixel.offset is None:
        _walk(ds, rows, None, None, little, codec, tags)
        return rows
    # the pixel data row in its place: elements such as (FFFC,FFFC) come after it
    cut = bisect_left(tags, pixel.tag)
    _walk(ds, rows, None, None, little, codec, tags[:cut])
    rows.append(TagRow(pixel.tag, pixel.vr, pixel.keyword, None, pixel.length, None, None))
    _walk(ds, rows, None, None, little, codec, tags[cut:])
    return rows


def _charset(ds: Dataset, inherited: str | None) -> str | None:
    """The codec for plain text in ``ds``, or None when pydicom must decode it."""
    if inherited is None or 0x00080005 not in ds:
        return inherited
    # (0008,0005) Specific Character Set: pydicom has usually converted it while reading
    value = ds.get_item(0x00080005).value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None  # several values: code extensions, leave them to pydicom
    return PLAIN_CHARSETS.get(value.strip(" \0"))


def _walk(
    ds: Dataset,
    rows: list[TagRow],
    parent: int | None,
    item: int | None,
    little: bool,
    codec: str | None,
    tags: list[BaseTag] | None = None,
) -> None:
    for tag in sorted(ds.keys()) if tags is None else tags:
        if codec is not None:
            raw = ds.get_item(tag, keep_deferred=True)  # unconverted: no conversion error here
            if isinstance(raw, RawDataElement):
                fast = _fast_row(raw, little, codec, parent, item)
                if fast is not None:
                    rows.append(fast)
                    continue
        try:
            elem = ds[tag]
        except Exception:  # a value pydicom cannot convert: keep its place and size
            raw = ds.get_item(tag, keep_deferred=True)
            size = len(raw.value) if isinstance(raw.value, bytes) else None
            rows.append(TagRow(int(tag), _vr(raw.VR), "", None, size, parent, item))
            continue
        vr = _resolve_vr(elem, ds, little)
        if vr == "SQ":
            index = len(rows)
            rows.append(TagRow(int(tag), vr, _keyword(int(tag)), None, None, parent, item))
            for i, child in enumerate(elem.value or ()):
                _walk(child, rows, index, i, little, _charset(child, codec))
            continue
        value, nbytes = _value(elem, vr)
        rows.append(TagRow(int(tag), vr, _keyword(int(tag)), value, nbytes, parent, item))


def _fast_row(raw: RawDataElement, little: bool, codec: str, parent: int | None, item: int | None) -> TagRow | None:
    tag = int(raw.tag)
    vr = raw.VR or _dictionary_vr(tag)
    value = raw.value
    if vr is None or vr == "SQ" or value is None or tag & 0xFFFF == 0 and tag >> 16 != 2:
        return None  # unknown, a sequence, deferred, or a group length: let pydicom do it
    if vr == "UN" and _dictionary_vr(tag):
        return None  # pydicom re-reads UN with the dictionary's VR
    if vr in BINARY_VRS:
        return TagRow(tag, vr, _keyword(tag), None, len(value), parent, item)
    if vr in NUMBER_FORMATS:
        code = NUMBER_FORMATS[vr]
        count, extra = divmod(len(value), struct.calcsize(code))
        if extra:
            return None
        numbers = struct.unpack(f"{'<' if little else '>'}{count}{code}", value)
        text = "\\".join(map(repr if code in "fd" else str, numbers))
        return TagRow(tag, vr, _keyword(tag), text, None, parent, item)
    if vr in DEFAULT_TEXT_VRS:  # as pydicom does: AE, DS, IS per value, the rest at the end
        text = value.decode(DEFAULT_CODEC)
        if vr in ("AE", "DS", "IS"):
            text = "\\".join(v.strip(" \0") for v in text.split("\\"))
        else:
            text = text.rstrip(" \0")
    elif vr in CHARSET_TEXT_VRS:  # bytes the character set cannot decode become U+FFFD, as in pydicom
        text = "\\".join(v.rstrip(" \0") for v in value.decode(codec, "replace").split("\\"))
    elif vr in UNSPLIT_TEXT_VRS:
        text = value.decode(codec, "replace").rstrip(" \0")
    else:
        return None
    return TagRow(tag, vr, _keyword(tag), text, None, parent, item)


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return "" if (tag >> 16) % 2 else keyword_for_tag(tag)


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    if (tag >> 16) % 2:
        return None  # private: pydicom knows the private dictionaries
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return None if " or " in vr else vr


def _vr(vr: str | None) -> str:
    """Always two letters of PS3.5 Table 6.2-1: an unresolvable 'US or SS' becomes its first
    choice, a VR the standard does not define (``ZZ`` inside a sequence item) UN."""
    vr = (vr or "UN")[:2]
    return vr if vr in KNOWN_VRS else "UN"


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
