"""The DICOM JSON model (PS3.18 Annex F) of a dataset, and its bulk data.

``to_dicom_json`` gives the object ``GET /tags?format=dicomjson`` serves:
8-hex-digit upper-case keys in ascending order, each ``{"vr", "Value"}`` —
numbers as JSON numbers (IS DS US SS UL SL UV SV FL FD), AT as 8-hex strings,
PN as ``{"Alphabetic", "Ideographic", "Phonetic"}`` (the groups present),
sequences as arrays of item objects — no ``"Value"`` for an empty element, and
``null`` for an empty value among several.

What is left out, or decided here:

* The file meta information (group 0002): the JSON model describes the data
  set, not its Part 10 encoding. Group lengths (gggg,0000) are left out too:
  they count bytes of one encoding, and mean nothing once re-encoded. So is
  Data Set Trailing Padding (FFFC,FFFC), which only pads the file.
* Binary values (OB OD OF OL OV OW UN): up to ``threshold`` bytes inline as
  ``"InlineBinary"`` (base64); longer ones, and the pixel data always, as
  ``"BulkDataURI": bulk_uri(element_path)``. The element path is the tag
  (``"7FE00010"``), or for an element inside a sequence the sequence tag, the
  0-based item index and the tag (``"00540016/0/00181072"``), as deep as needed.
* Specific Character Set (0008,0005) keeps the file's value: it says how the
  instance is encoded; the JSON text itself is Unicode, as JSON always is.
* FL/FD/DS values that are not finite (JSON has no numbers for them) are the
  strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (as fo-dicom, dicom-rs and
  Azure's DICOM service write them). A number string pydicom kept as text
  because it could not read it (an IS of ``"1A"``) stays a string.
* An element pydicom cannot convert at all is given as ``UN`` with its raw bytes.

``bulk_value`` / ``bulk_stream`` give the bytes a BulkDataURI stands for: the
value as stored in the file, in the file's byte order. For the pixel data that
means straight from the file (``parsed.pixel``), without reading anything else;
encapsulated (compressed) pixel data comes back as its encapsulated items (the
Basic Offset Table item and the fragment items, each with its item header,
without the sequence delimiter) exactly as stored — not split into frames.
"""

import base64
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..errors import NotFound
from .parse import PIXEL_TAGS, Parsed, PixelElement, open_source, source_size
from .tags import BINARY_VRS, UNSPLIT_TEXT_VRS, TagRow
from .webjson import (  # the server's part, without pydicom: defined there, re-exported here
    FLOAT_VRS,
    INT_VRS,
    PN_GROUPS,
    STORED_BULK,
    _json_value,
    absolute_bulk,
    instance_path,
    json_value,
    series_path,
    study_path,
)

PLAIN_TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"}  # values are the text itself
PATH_RE = re.compile(r"^[0-9A-Fa-f]{8}(/[0-9]+/[0-9A-Fa-f]{8})*$")
CHUNK = 1 << 20
TRAILING_PADDING = 0xFFFCFFFC

BulkUri = Callable[[str], str]


def to_dicom_json(
    ds: Dataset, bulk_uri: BulkUri, threshold: int = 1024, pixel: PixelElement | None = None
) -> dict[str, Any]:
    """The DICOM JSON object of ``ds`` (without its file meta), keys in tag order.

    ``pixel`` describes a pixel data element that is not in ``ds`` (``parse.read``
    leaves it in the file); it is added as a BulkDataURI.
    """
    out = _dataset(ds, "", bulk_uri, threshold, top=True)
    if pixel is not None:
        key = f"{pixel.tag:08X}"
        vr = "OB" if pixel.encapsulated else pixel.vr  # PS3.5 A.4: encapsulated is OB, whatever the file says
        out.setdefault(key, {"vr": vr, "BulkDataURI": bulk_uri(key)})
    return dict(sorted(out.items()))


def stored_metadata(parsed: Parsed, rows: Sequence[TagRow], study: str, series: str, sop: str) -> str:
    """An instance's DICOM JSON as compact text, for storing: what WADO-RS metadata serves
    (PS3.18 §10.4.1.1.2). BulkDataURIs are relative to the service root
    (``instance_path(...)/bulk/<element path>``); answers make them absolute."""
    base = instance_path(study, series, sop) + "/bulk/"

    def uri(element: str) -> str:
        return base + element

    try:
        model = from_rows(rows, uri, parsed.ds, parsed.pixel)
    except Exception:  # rows of data too odd for the quick way: pydicom's
        model = to_dicom_json(parsed.ds, uri, threshold=0, pixel=parsed.pixel)
    return json.dumps(model, separators=(",", ":"), ensure_ascii=False)


def from_rows(
    rows: Sequence[TagRow], bulk_uri: BulkUri, ds: Dataset, pixel: PixelElement | None = None
) -> dict[str, Any]:
    """The DICOM JSON object of a dataset from its flattened rows (``tags.flatten``), as
    ``to_dicom_json(ds, bulk_uri, threshold=0, pixel=pixel)`` gives it, at a fraction of the
    cost: the rows already hold every value as text, so no element goes through pydicom's
    conversion again (about 50 µs an element). Every binary value is a BulkDataURI
    (PS3.18 F.2.7 allows it for any size). ``ds`` is only asked how many items a
    sequence has (an empty item has no rows) when its row does not say (``TagRow.items``).
    """
    top: dict[str, Any] = {}
    items: dict[int, list[dict]] = {}  # row index of a sequence -> its item objects
    paths: dict[int, str] = {}  # row index of a sequence -> its element path
    for index, (tag, vr, _, value, nbytes, parent, item, count) in enumerate(rows):
        if parent is None:
            target = top
        elif parent in items:
            target = items[parent][item]
        else:
            continue  # inside a sequence that is left out
        if tag >> 16 == 0x0002 or not tag & 0xFFFF or tag == TRAILING_PADDING:  # _left_out
            continue
        key = _KEYS.get(tag) or _key(tag)
        if value is not None:  # text (SQ and binary rows have none)
            if vr in PLAIN_TEXT_VRS and "\\" not in value:  # the common case, kept cheap
                target[key] = {"vr": vr, "Value": [value]} if value else {"vr": vr}
            else:
                values = _text_values(value, vr)
                target[key] = {"vr": vr, "Value": values} if values else {"vr": vr}
            continue
        path = key if parent is None else f"{paths[parent]}/{item}/{key}"
        if vr == "SQ":
            count = count if count is not None else _item_count(ds, path)
            items[index], paths[index] = [{} for _ in range(count)], path
            target[key] = {"vr": "SQ", "Value": items[index]} if count else {"vr": "SQ"}
        else:  # binary, or a value pydicom could not convert (raw bytes, as UN)
            vr = vr if vr in BINARY_VRS else "UN"
            if pixel is not None and parent is None and tag == pixel.tag and pixel.offset is not None:
                vr = "OB" if pixel.encapsulated else pixel.vr  # PS3.5 A.4: encapsulated is OB
            target[key] = {"vr": vr, "BulkDataURI": bulk_uri(path)} if nbytes else {"vr": vr}
    return top


_KEYS: dict[int, str] = {}  # tag -> its DICOM JSON key, "GGGGEEEE" (PS3.18 F.2.2)


def _key(tag: int) -> str:
    key = f"{tag:08X}"
    if len(_KEYS) < 4096:  # the public tags a worker sees; bounded against odd private ones
        _KEYS[tag] = key
    return key


def _item_count(ds: Dataset, path: str) -> int:
    steps = _parse_path(path)
    for depth in range(0, len(steps) - 1, 2):
        ds = ds[steps[depth]].value[steps[depth + 1]]
    return len(ds[steps[-1]].value or ())


def _text_values(text: str, vr: str) -> list:
    """A row's text value (several values joined by backslashes) as the JSON "Value" array."""
    if text == "":
        return []
    if vr in UNSPLIT_TEXT_VRS:
        return [text]
    if vr in PLAIN_TEXT_VRS:  # the common case, kept cheap
        return [text] if "\\" not in text else [v or None for v in text.split("\\")]
    if vr == "AT":  # the rows write "(gggg,eeee)"
        return [f"{v[1:5]}{v[6:10]}".upper() if len(v) == 11 else (v or None) for v in text.split("\\")]
    if vr == "IS":
        return [_integer_string(v) for v in text.split("\\")]
    return [_json_value(v, vr) for v in text.split("\\")]


def _integer_string(v: str) -> Any:
    """IS as pydicom reads it: "12" and also "12.0" are 12; anything else stays text."""
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        number = float(v)
    except ValueError:
        return v
    return int(number) if number.is_integer() else v


def bulk_stream(path: Path, parsed: Parsed, element_path: str) -> tuple[int, Iterator[bytes]]:
    """The byte length and the chunks of the binary element at ``element_path``.

    Pixel data kept in the file is read lazily from ``path``, 1 MiB a chunk: consume
    the iterator in this process, while the file exists. Other values (already in
    ``parsed.ds``) come as one chunk. Raises NotFound when the path names
    nothing, or an element that is not binary.
    """
    steps = _parse_path(element_path)
    pixel = parsed.pixel
    if len(steps) == 1 and pixel is not None and pixel.offset is not None and steps[0] == pixel.tag:
        # A file cut short holds less than the header says: promise only what is there.
        length = max(0, min(pixel.length, source_size(path) - pixel.offset))
        return length, _file_chunks(path, pixel.offset, length)
    value = _binary_at(parsed.ds, steps, element_path)
    return len(value), iter([value] if value else [])


def bulk_value(path: Path, parsed: Parsed, element_path: str) -> bytes:
    """The bytes of the binary element at ``element_path`` (see ``bulk_stream``), whole."""
    _, chunks = bulk_stream(path, parsed, element_path)
    return b"".join(chunks)


def _dataset(ds: Dataset, prefix: str, bulk_uri: BulkUri, threshold: int, top: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        tag = int(tag)
        if _left_out(tag):
            continue
        key = f"{tag:08X}"
        vr, value = _resolve(ds, tag)
        path = prefix + key
        if vr == "SQ":
            items = [_dataset(item, f"{path}/{i}/", bulk_uri, threshold) for i, item in enumerate(value or ())]
            out[key] = {"vr": vr, "Value": items} if items else {"vr": vr}
        elif vr in BINARY_VRS:
            out[key] = _binary(vr, value, path, bulk_uri, threshold, always_bulk=top and tag in PIXEL_TAGS)
        else:
            values = _values(value, vr)
            out[key] = {"vr": vr, "Value": values} if values else {"vr": vr}
    return out


def _left_out(tag: int) -> bool:
    """File meta (group 0002), group lengths (gggg,0000), Data Set Trailing Padding (FFFC,FFFC)."""
    return tag >> 16 == 0x0002 or tag & 0xFFFF == 0 or tag == TRAILING_PADDING


def _resolve(ds: Dataset, tag: int) -> tuple[str, Any]:
    """(VR, value) of an element, as JSON will show it: bytes always under a binary VR."""
    try:
        elem: DataElement = ds[tag]
    except Exception:  # a value pydicom cannot convert: its raw bytes, as UN
        raw = ds.get_item(tag, keep_deferred=True)  # as read: converting it again would raise again
        value = raw.value if isinstance(raw, RawDataElement) else None
        return "UN", value if isinstance(value, bytes) else b""
    vr = (elem.VR or "UN")[:2]  # an ambiguous VR pydicom could not settle: its first choice
    value = elem.value
    if isinstance(value, (bytes, bytearray)) and vr not in BINARY_VRS:
        return "UN", bytes(value)  # e.g. "US or SS" left unconverted
    return vr, value


def _binary(vr: str, value: Any, path: str, bulk_uri: BulkUri, threshold: int, always_bulk: bool) -> dict:
    if not value:
        return {"vr": vr}
    if always_bulk or len(value) > threshold:
        return {"vr": vr, "BulkDataURI": bulk_uri(path)}
    return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}


def _values(value: Any, vr: str) -> list:
    """The JSON "Value" array; empty when the element has no value."""
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    return [_json_value(v, vr) for v in items]


def _parse_path(element_path: str) -> list[int]:
    """"00540016/0/00181072" → [tag, item, tag]; NotFound when malformed."""
    if not PATH_RE.match(element_path):
        raise NotFound(f"no such element: {element_path!r} (expected TAG or TAG/item/TAG...)")
    parts = element_path.split("/")
    return [int(p, 16) if i % 2 == 0 else int(p) for i, p in enumerate(parts)]


def _binary_at(ds: Dataset, steps: list[int], element_path: str) -> bytes:
    missing = NotFound(f"no binary element at {element_path}")
    for depth in range(0, len(steps) - 1, 2):
        tag, index = steps[depth], steps[depth + 1]
        if tag not in ds:
            raise missing
        vr, value = _resolve(ds, tag)
        if vr != "SQ" or not 0 <= index < len(value or ()):
            raise missing
        ds = value[index]
    tag = steps[-1]
    if tag not in ds or _left_out(tag):
        raise missing
    vr, value = _resolve(ds, tag)
    if vr not in BINARY_VRS:
        raise missing
    return bytes(value or b"")


def _file_chunks(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with open_source(path) as fp:
        fp.seek(offset)
        remaining = length
        while remaining > 0:
            chunk = fp.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
