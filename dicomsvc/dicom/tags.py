"""Flattening a dataset into the rows ``GET /tags`` serves.

One row per data element, file meta (group 0002) first, then the dataset in
file order, each sequence's items right after the sequence's own row. Rows
inside a sequence item point at their sequence row (``parent``, an index into
the returned list) and carry the 0-based ``item``; the store turns indexes into
row IDs.

Converting every element through pydicom's ``Dataset.__getitem__`` costs about
20 µs an element, the largest single cost of an ingest; so with a plain character
set (ISO_IR 6, ISO_IR 100, ISO_IR 192: one codec, no ISO 2022 escapes) elements
pydicom still holds raw are turned into text straight from their bytes
(``_fast_value``), sequences of defined length are walked over their bytes once
(``_sequence``: Explicit and Implicit VR Little Endian, PS3.5 §7.5; deflated data
sets are read as Explicit VR Little Endian, so the same path), and elements pydicom
has converted already are read from their values. What is unusual (big endian,
code extensions, ambiguous or private VRs in Implicit VR, undefined lengths,
damaged item structure...) goes through pydicom, an element or a whole top-level
sequence at a time, counted in ``CONVERTED``. The tests check that both paths give
the same rows for every file pydicom and pydicom-data ship.
"""

import struct
from bisect import bisect_left
from collections import Counter
from functools import lru_cache, partial
from typing import NamedTuple

from pydicom.datadict import dictionary_VR, keyword_for_tag, private_dictionary_VR
from pydicom.dataelem import RawDataElement

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32

from .parse import KNOWN_VRS, PixelElement

# VRs whose values are bytes: the row says how many, not what.
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


class TagRow(NamedTuple):
    """One row of ``GET /tags`` (a named tuple: a frozen dataclass took twice as long to
    build, and flatten builds one per element)."""

    tag: int
    vr: str
    keyword: str
    value: str | None
    nbytes: int | None  # for binary values, instead of the value
    parent: int | None  # index of the sequence row this element's item belongs to
    item: int | None
    items: int | None = None  # a sequence's number of items (an empty item has no rows)

    @property
    def tag_str(self) -> str:
        return format_tag(self.tag)


# TagRow(...) runs a Python-level __new__; the hot paths build the tuple directly (all fields)
_row = partial(tuple.__new__, TagRow)


def format_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# Character sets whose text decodes with one Python codec, no escape sequences.
# what pydicom decodes with when no character set is given ("iso8859", ISO 8859-1), by the
# name Python decodes fastest (5x faster than the alias: no codec registry look-up)
DEFAULT_CODEC = "latin_1"
PLAIN_CHARSETS = {"": DEFAULT_CODEC, "ISO_IR 6": DEFAULT_CODEC, "ISO_IR 100": "latin_1", "ISO_IR 192": "utf-8"}
# VRs in the default repertoire whatever the character set; then those that use it.
DEFAULT_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}
CHARSET_TEXT_VRS = {"LO", "SH", "UC"}  # and PN, split into component groups (_fast_value)
UNSPLIT_TEXT_VRS = {"LT", "ST", "UT", "UR"}  # one value, backslashes and all
# struct codes and sizes of the binary number VRs
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
# what _fast_value reads, and sequences; the VRs with a 4-byte length in Explicit VR (PS3.5 §7.1.2)
FAST_VRS = BINARY_VRS | NUMBER_FORMATS.keys() | DEFAULT_TEXT_VRS | CHARSET_TEXT_VRS | UNSPLIT_TEXT_VRS | {"AT", "PN", "SQ"}
_EXPLICIT_VRS = {vr.encode("ascii"): vr for vr in FAST_VRS}
LONG_VRS = frozenset(vr.value for vr in EXPLICIT_VR_LENGTH_32)
AMBIGUOUS_VRS = frozenset(vr.value for vr in AMBIGUOUS_VR)  # "US or SS"...: pydicom settles them
# PS3.5 §7.5: item and delimitation tags
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
_HEADER = struct.Struct("<HHL").unpack_from  # tag, 4-byte length (Implicit VR; items)
_EXPLICIT = struct.Struct("<HH2sH").unpack_from  # tag, VR, 2-byte length (Explicit VR)
_LENGTH = struct.Struct("<L").unpack_from  # the 4-byte length after OB, SQ, UN... (Explicit VR)

# Elements converted through pydicom (``Dataset.__getitem__``) by flatten, by VR: the
# slow path, counted so the tests can tell that ordinary files never take it.
CONVERTED: Counter[str] = Counter()


def flatten(ds: Dataset, pixel: PixelElement | None = None, fast: bool = True) -> list[TagRow]:
    """Rows for the file meta, the dataset and (when it was not read) the pixel data,
    which takes its place by tag among the dataset's elements.

    ``fast=False`` converts every element through pydicom (the tests compare both).
    """
    rows: list[TagRow] = []
    little = ds.original_encoding[1] is not False
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:  # PS3.10 §7.1: always Explicit VR Little Endian
        _walk(file_meta, rows, None, None, True, DEFAULT_CODEC if fast else None)
    codec = _charset(ds, DEFAULT_CODEC) if fast else None
    elements = sorted(ds.items(), key=_tag_of)  # as read: raw elements stay raw
    if pixel is None or pixel.offset is None:
        _walk(ds, rows, None, None, little, codec, elements)
        return rows
    # the pixel data row in its place: elements such as (FFFC,FFFC) come after it
    cut = bisect_left(elements, pixel.tag, key=_tag_of)
    _walk(ds, rows, None, None, little, codec, elements[:cut])
    rows.append(TagRow(pixel.tag, pixel.vr, pixel.keyword, None, pixel.length, None, None))
    _walk(ds, rows, None, None, little, codec, elements[cut:])
    return rows


def _tag_of(pair: tuple[BaseTag, object]) -> int:
    return int(pair[0])


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
    elements: list[tuple[BaseTag, object]] | None = None,
) -> None:
    """Rows of ``ds``'s elements (``elements``: some of them, sorted), in tag order.

    With a ``codec`` (a plain character set), elements pydicom has not converted yet
    are read straight from their bytes (``_fast_value``), sequences of defined length
    too (``_sequence``), and elements pydicom has converted already are read from their
    values; anything else -- and everything when ``codec`` is None -- is converted by
    pydicom (``Dataset.__getitem__``), counted in ``CONVERTED``."""
    if elements is None:
        elements = sorted(ds.items(), key=_tag_of)
    for tag, elem in elements:
        tag = int(tag)
        if codec is not None:
            if type(elem) is RawDataElement:
                vr = _raw_vr(ds, tag, elem.VR)
                value = elem.value
                if value is None and elem.length == 0:
                    value = b""  # pydicom holds some empty values as None
                if vr == "SQ":
                    # a sequence of defined length (pydicom reads those of undefined length
                    # at once): its items straight from its bytes, unless they are unusual
                    if elem.is_little_endian and isinstance(value, bytes):
                        mark = len(rows)
                        rows.append(None)  # type: ignore[arg-type]  (the sequence row, below)
                        try:
                            count = _sequence(value, 0, len(value), elem.is_implicit_VR, codec, rows, mark)
                        except Exception:  # bytes too damaged for the quick reading: pydicom's
                            count = None
                        if count is not None:
                            rows[mark] = TagRow(tag, "SQ", _keyword(tag), None, None, parent, item, count)
                            continue
                        del rows[mark:]
                elif vr is not None:
                    found = None if value is None else _fast_value(tag, vr, value, elem.is_little_endian, codec)
                    if found is not None:
                        rows.append(_row((tag, vr, _keyword(tag), found[0], found[1], parent, item, None)))
                        continue
            elif type(elem) is DataElement and elem.VR not in AMBIGUOUS_VRS:
                # converted while reading (Rows, SOP Instance UID...), or a sequence of undefined
                # length: Dataset.__getitem__ would hand it back as it is
                vr = _vr(elem.VR)
                if vr == "SQ":
                    _sequence_rows(rows, tag, elem, parent, item, little, codec)
                    continue
                value, nbytes = _value(elem, vr)
                rows.append(TagRow(tag, vr, _keyword(tag), value, nbytes, parent, item))
                continue
        try:
            elem = ds[tag]
        except Exception:  # a value pydicom cannot convert: keep its place and size
            raw = ds.get_item(tag, keep_deferred=True)
            size = len(raw.value) if isinstance(raw.value, bytes) else None
            rows.append(TagRow(tag, _vr(raw.VR), "", None, size, parent, item))
            CONVERTED[_vr(raw.VR)] += 1
            continue
        vr = _resolve_vr(elem, ds, little)
        CONVERTED[vr] += 1
        if vr == "SQ":
            _sequence_rows(rows, tag, elem, parent, item, little, codec)
            continue
        value, nbytes = _value(elem, vr)
        rows.append(TagRow(tag, vr, _keyword(tag), value, nbytes, parent, item))


def _sequence_rows(
    rows: list[TagRow], tag: int, elem: DataElement, parent: int | None, item: int | None, little: bool, codec: str | None
) -> None:
    """The row of a sequence pydicom has read, then its items' rows."""
    index = len(rows)
    items = elem.value or ()
    rows.append(TagRow(tag, "SQ", _keyword(tag), None, None, parent, item, len(items)))
    for i, child in enumerate(items):
        _walk(child, rows, index, i, little, _charset(child, codec))


def _sequence(buf: bytes, pos: int, end: int | None, implicit: bool, codec: str, rows: list, parent: int) -> int | None:
    """Rows of the items of a Little Endian sequence value (PS3.5 §7.5) from ``buf[pos:]``:
    up to ``end`` (defined length), or through its Sequence Delimitation Item (FFFE,E0DD)
    when ``end`` is None (undefined length), appended to ``rows``. Returns the number of
    items and leaves the position after the value in ``_END[0]``; None when the bytes hold
    anything pydicom would read its own way -- an item-level Specific Character Set, a
    private or ambiguous VR in Implicit VR, elements out of order, a length that runs past
    its item, an unknown VR... -- and then the caller discards what was appended."""
    count = 0
    size = len(buf)
    while end is None or pos < end:
        if pos + 8 > size:
            return None
        group, element, length = _HEADER(buf, pos)
        pos += 8
        tag = group << 16 | element
        if tag == SEQUENCE_END and end is None:
            _END[0] = pos
            return count
        if tag != ITEM:
            return None
        item_end = None if length == UNDEFINED_LENGTH else pos + length
        if item_end is not None and item_end > size:
            return None
        pos = _item(buf, pos, item_end, implicit, codec, rows, parent, count)
        if pos is None:
            return None
        count += 1
    if pos != end:
        return None
    _END[0] = pos
    return count


_END = [0]  # where the last _sequence ended (a module-level slot: no tuple to build per call)


def _item(
    buf: bytes, pos: int, end: int | None, implicit: bool, codec: str, rows: list, parent: int, item: int
) -> int | None:
    """Rows of one item's data set (PS3.5 §7.5.1) from ``buf[pos:]``, up to ``end`` or
    through its Item Delimitation Item (FFFE,E00D); the position after it, or None."""
    size = len(buf)
    last = -1
    while end is None or pos < end:
        if pos + 8 > size:
            return None
        if implicit:
            group, element, length = _HEADER(buf, pos)
            tag = group << 16 | element
            pos += 8
            if tag == ITEM_END and end is None and length == 0:
                return pos
            vr = _dictionary_vr(tag) or ("UL" if tag & 0xFFFF == 0 and not tag >> 16 & 1 else None)
            if vr is None:  # private, unknown or ambiguous: pydicom resolves it
                return None
        else:
            group, element, vr_bytes, length = _EXPLICIT(buf, pos)
            tag = group << 16 | element
            if tag == ITEM_END and end is None:
                return pos + 8 if buf[pos + 4 : pos + 8] == b"\0\0\0\0" else None
            vr = _EXPLICIT_VRS.get(vr_bytes)
            if vr is None:
                return None
            if vr in LONG_VRS:
                if pos + 12 > size:
                    return None
                length = _LENGTH(buf, pos + 8)[0]
                pos += 12
            else:
                pos += 8
        if tag <= last or tag == 0x00080005 or tag >> 16 == 0xFFFE:
            return None  # out of order or repeated; an item's own character set; a stray delimiter
        last = tag
        if vr == "SQ":
            index = len(rows)
            rows.append(None)
            count = _sequence(buf, pos, None if length == UNDEFINED_LENGTH else pos + length, implicit, codec, rows, index)
            if count is None:
                return None
            rows[index] = TagRow(tag, "SQ", _keyword(tag), None, None, parent, item, count)
            pos = _END[0]
            continue
        if length == UNDEFINED_LENGTH or pos + length > size or end is not None and pos + length > end:
            return None
        if vr == "UN" and (tag >> 16 & 1 or _dictionary_entry(tag)):
            return None  # pydicom may read it with a dictionary's VR
        found = _fast_value(tag, vr, buf[pos : pos + length], True, codec)
        if found is None:
            return None
        rows.append(_row((tag, vr, _keyword(tag), found[0], found[1], parent, item, None)))
        pos += length
    return pos if pos == end else None


def _fast_value(tag: int, vr: str, value: bytes, little: bool, codec: str) -> tuple[str | None, int | None] | None:
    """(text, byte count) of an element's value straight from its bytes, as pydicom's
    conversion would show it (``_value``), or None when pydicom must convert it."""
    if vr in BINARY_VRS:
        return None, len(value)
    if vr in NUMBER_FORMATS:
        code = NUMBER_FORMATS[vr]
        count, extra = divmod(len(value), struct.calcsize(code))
        if extra:
            return None
        numbers = struct.unpack(f"{'<' if little else '>'}{count}{code}", value)
        return "\\".join(map(repr if code in "fd" else str, numbers)), None
    if vr == "AT":  # PS3.5 §6.2: pairs of 16-bit unsigned integers, group then element
        if len(value) % 4:
            return None
        numbers = struct.unpack(f"{'<' if little else '>'}{len(value) // 2}H", value)
        return "\\".join(f"({numbers[i]:04X},{numbers[i + 1]:04X})" for i in range(0, len(numbers), 2)), None
    if vr in DEFAULT_TEXT_VRS:  # as pydicom does: padding off the end; AE, DS, IS per value
        text = value.decode(DEFAULT_CODEC).rstrip(" \0")
        if not text.isprintable() or vr == "AE" and b"\0" in value:
            return None  # control characters (PS3.5 §6.1.2.3): pydicom strips some of them
        if vr in ("AE", "DS", "IS"):
            values = [v.strip(" ") for v in text.split("\\")]
            if vr == "IS" and not all(map(_is_integer, values)):
                return None  # "2.50", "inf": pydicom makes them numbers its own way
            text = "\\".join(values)
        return text, None
    if b"\x1b" in value:
        return None  # ISO 2022 escape sequences (PS3.5 §6.1.2.5): pydicom's decoding
    if vr in CHARSET_TEXT_VRS:  # bytes the character set cannot decode become U+FFFD, as in pydicom
        return "\\".join(v.rstrip(" \0") for v in value.decode(codec, "replace").split("\\")), None
    if vr in UNSPLIT_TEXT_VRS:
        return value.decode(codec, "replace").rstrip(" \0"), None
    if vr == "PN":
        try:
            text = value.rstrip(b"\0 ").decode(codec)
        except UnicodeDecodeError:
            return None  # pydicom re-encodes the replacement characters its own way
        # PS3.5 §6.2.1.1: values split at "\", each into up to three component groups at
        # "=" -- pydicom drops empty trailing groups
        return "\\".join(v if "=" not in v else _person_name(v) for v in text.split("\\")), None
    return None


def _is_integer(value: str) -> bool:
    """An IS value as PS3.5 Table 6.2-1 has it: an optional sign and digits, 12 characters
    at most (pydicom reads longer ones through a float); or empty."""
    digits = value[1:] if value[:1] in ("+", "-") else value
    return value == "" or len(value) <= 12 and digits.isascii() and digits.isdigit()


def _person_name(value: str) -> str:
    groups = value.split("=")
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return "" if (tag >> 16) % 2 else keyword_for_tag(tag)


@lru_cache(maxsize=4096)
def _dictionary_entry(tag: int) -> str | None:
    """The data dictionary's VR of a public tag (PS3.6), "US or SS" and all; None if unknown."""
    if (tag >> 16) % 2:
        return None  # private: pydicom knows the private dictionaries
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    """The dictionary's VR when it is one VR (not "US or SS", which pydicom settles)."""
    vr = _dictionary_entry(tag)
    return None if vr is None or " or " in vr else vr


def _raw_vr(ds: Dataset, tag: int, vr: str | None) -> str | None:
    """The VR pydicom gives a raw element of ``ds`` (``pydicom.hooks.raw_element_vr``), or
    None when pydicom has to settle it (ambiguous, unknown).

    Implicit VR (PS3.5 §A.1): the dictionary's; a public group length (gggg,0000) UL; a
    private element the private dictionary's VR for its creator, else UN (PS3.5 §6.2.2).
    An explicit UN of a tag pydicom knows is read with the dictionary's VR: left to it."""
    if vr is None:
        if tag >> 16 & 1:
            return _private_vr(ds, tag)
        entry = _dictionary_entry(tag)
        if entry is None:
            return "UL" if tag & 0xFFFF == 0 else None
        return None if " or " in entry else entry
    if vr == "UN":
        if tag >> 16 & 1:
            return "UN" if _private_vr(ds, tag) == "UN" else None
        if _dictionary_entry(tag) is not None:
            return None
    return vr


def _private_vr(ds: Dataset, tag: int) -> str | None:
    """pydicom's VR for a private element (``pydicom.hooks._private_vr_for_tag``): LO for a
    Private Creator (gggg,0010-00FF) (PS3.5 §7.8.1), the private dictionary's for an element
    of a creator it knows, else UN; None when pydicom has to settle it."""
    element = tag & 0xFFFF
    if 0x0010 <= element < 0x0100:
        return "LO"
    creator_tag = tag & 0xFFFF0000 | element >> 8
    if not element & 0xFF00 or creator_tag not in ds:
        return "UN"
    try:
        creator = ds[creator_tag].value
    except Exception:
        return None
    if not isinstance(creator, str):
        return None  # several values, bytes: pydicom warns and decides
    try:
        vr = private_dictionary_VR(tag, creator)
    except KeyError:
        return "UN"
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
