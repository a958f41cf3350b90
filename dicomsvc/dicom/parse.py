"""Reading and validating DICOM files.

``read`` parses every element but the pixel data, and records where the pixel
data element sits in the file, so a 1 GB cine loop is never loaded whole: it is
decoded one frame at a time (``dicomsvc.imaging.decode``), and only ingest
hashes it (``pixel_hash``, in chunks straight from the file). Deflated files are
the exception: their dataset is compressed as a whole, so they are read into
memory. Elements after the pixel data (Data Set Trailing Padding (FFFC,FFFC),
private groups above 7FE0) are read from the bytes after its value
(``_read_after_pixels``).

``pydicom.dcmread`` happily "reads" random bytes, PNGs and truncated files, so
``read`` checks for itself that it got a DICOM instance.
"""

import hashlib
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from ..errors import InvalidDicom, NotDicom
from .files import HEAD_BYTES, sniff

PIXEL_TAGS = (0x7FE00010, 0x7FE00009, 0x7FE00008)  # Pixel Data, Double Float, Float
PIXEL_KEYWORDS = {
    0x7FE00010: "PixelData",
    0x7FE00009: "DoubleFloatPixelData",
    0x7FE00008: "FloatPixelData",
}
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
# PS3.5 §9.1: components of digits, no leading zero (but "0" itself), at most 64 characters
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UID_MAX = 64
PRINTABLE_RE = re.compile(r"^[\x20-\x7e]+$")  # printable ASCII: the UI repertoire, less controls
CHUNK = 1 << 20
EXPLICIT_PIXEL_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}


@dataclass(frozen=True)
class PixelElement:
    """Where the pixel data element is, as found in the file (or in memory)."""

    tag: int
    vr: str
    offset: int | None  # file offset of the value; None when held in ``ds``
    length: int  # bytes of the encoded value (all items for encapsulated data)
    encapsulated: bool

    @property
    def keyword(self) -> str:
        return PIXEL_KEYWORDS[self.tag]


@dataclass
class Parsed:
    ds: Dataset  # every element but the pixel data (also those after it), unless ``pixel.offset`` is None
    sop_instance_uid: str
    pixel: PixelElement | None
    # what is wrong with the file but did not stop it being read (never quoting values)
    warnings: list[str] = field(default_factory=list)

    @property
    def transfer_syntax(self) -> str:
        return str(self.ds.file_meta.get("TransferSyntaxUID", ""))


def read(path: Path) -> Parsed:
    """Parse ``path`` (a file this service owns, e.g. a spool copy) or raise InvalidDicom."""
    with open(path, "rb") as fp:
        _check_header(fp)
        try:
            ds = dcmread(fp, force=True, stop_before_pixels=True)
            ds.file_meta  # noqa: B018  (a file without meta still gets an empty one)
            if str(ds.file_meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian:
                fp.seek(0)
                ds = dcmread(fp, force=True)
                pixel = _pixel_in_memory(ds)
            else:
                pixel = _pixel_in_file(fp, ds)
                if pixel is not None:
                    _read_after_pixels(fp, ds, pixel)
        except InvalidDicom:
            raise
        except Exception as exc:  # pydicom raises many kinds on broken input
            raise InvalidDicom(f"not a readable DICOM file ({type(exc).__name__})") from None
        if len(ds) == 0:
            raise InvalidDicom("not a DICOM instance: no data elements after the file meta")
        if pixel is None:
            _check_complete(ds, os.fstat(fp.fileno()).st_size)
        sop_uid, warnings = _sop_instance_uid(ds)
    return Parsed(ds=ds, sop_instance_uid=sop_uid, pixel=pixel, warnings=warnings)


def _check_header(fp: BinaryIO) -> None:
    """A Part 10 file has 'DICM' at 128; a bare dataset must start with a sane tag."""
    reason = sniff(fp.read(HEAD_BYTES))
    fp.seek(0)
    if reason:
        raise NotDicom(reason)


def _check_complete(ds: Dataset, file_size: int) -> None:
    """pydicom silently returns what it could read of a cut file: check the last element."""
    last = ds.get_item(max(ds.keys()))
    value_tell = getattr(last, "value_tell", None)
    if value_tell is None or last.length == UNDEFINED_LENGTH:
        return  # already converted, or a sequence of undefined length: no cheap check
    end = value_tell + last.length
    if end > file_size or 0 < file_size - end < 8:
        raise InvalidDicom("truncated file: the data set ends in the middle of an element")


def _sop_instance_uid(ds: Dataset) -> tuple[str, list[str]]:
    """The instance's identity, and a warning when it is not a UID by PS3.5 §9.1.

    (0008,0018) SOP Instance UID, else (0002,0003) Media Storage SOP Instance UID.
    Refused (InvalidDicom), as nothing identifies the instance: missing or empty;
    not one text value (several values, bytes, control or non-ASCII characters);
    longer than the 64 characters a UI value may have. Accepted with a warning,
    as dcmtk and Orthanc accept them: any other value that is not a valid UID, such
    as the 64-hex-digit hashes some anonymization tools write.
    """
    name = "SOP Instance UID (0008,0018)"
    try:
        uid = ds.get("SOPInstanceUID")
        if not uid:
            name = "Media Storage SOP Instance UID (0002,0003)"
            uid = ds.file_meta.get("MediaStorageSOPInstanceUID")
    except Exception:  # a value pydicom cannot convert
        raise InvalidDicom("not a DICOM instance: unreadable SOP Instance UID (0008,0018)") from None
    if not uid:
        raise InvalidDicom("not a DICOM instance: no SOP Instance UID (0008,0018)")
    if not isinstance(uid, str):  # several values, or bytes
        raise InvalidDicom(f"not a DICOM instance: {name} is not a single text value")
    uid = uid.strip().rstrip("\x00").strip()
    if not uid:
        raise InvalidDicom("not a DICOM instance: no SOP Instance UID (0008,0018)")
    if not PRINTABLE_RE.match(uid):
        raise InvalidDicom(f"not a DICOM instance: {name} holds non-printable or non-ASCII characters")
    if len(uid) > UID_MAX:
        raise InvalidDicom(f"not a DICOM instance: {name} is longer than {UID_MAX} characters")
    if not UID_RE.match(uid):
        return uid, [f"{name} is not a valid UID (PS3.5 §9.1)"]
    return uid, []


def _pixel_in_memory(ds: Dataset) -> PixelElement | None:
    for tag in PIXEL_TAGS:
        if tag in ds:
            elem = ds[tag]
            return PixelElement(
                tag=tag,
                vr=elem.VR,
                offset=None,
                length=len(elem.value or b""),
                encapsulated=bool(elem.is_undefined_length),
            )
    return None


def _pixel_in_file(fp: BinaryIO, ds: Dataset) -> PixelElement | None:
    """Read the pixel data element's header where dcmread stopped."""
    _, little = ds.original_encoding
    if little is None:  # nothing was read: an empty dataset
        return None
    end = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8:
        return None
    group, elem = struct.unpack(f"{end}HH", head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_TAGS:
        return None
    # Trust the bytes over the declared syntax: some files say explicit VR and are not.
    if head[4:6] not in EXPLICIT_PIXEL_VRS:
        vr = "OW" if tag == 0x7FE00010 else ("OD" if tag == 0x7FE00009 else "OF")
        (length,) = struct.unpack(f"{end}L", head[4:8])
    else:
        vr = head[4:6].decode("ascii")
        tail = fp.read(4)
        if len(tail) < 4:
            raise InvalidDicom("truncated file: the Pixel Data (7FE0,0010) header is cut off")
        (length,) = struct.unpack(f"{end}L", tail)
    offset = fp.tell()
    if length != UNDEFINED_LENGTH:
        return PixelElement(tag, vr, offset, length, encapsulated=False)
    return PixelElement(tag, vr, offset, _encapsulated_length(fp, end), encapsulated=True)


def _read_after_pixels(fp: BinaryIO, ds: Dataset, pixel: PixelElement) -> None:
    """Add to ``ds`` the elements that follow the pixel data's value in the file.

    ``dcmread(stop_before_pixels=True)`` stops at the pixel data element and never
    reads what comes after it, so this seeks past the value (and the sequence
    delimiter of encapsulated data) and reads the rest with pydicom's reader, in
    the encoding pydicom found for the data set.
    """
    size = os.fstat(fp.fileno()).st_size
    start = pixel.offset + pixel.length + (8 if pixel.encapsulated else 0)
    if start + 8 > size:  # nothing, or less than an element header (a cut pixel value)
        return
    fp.seek(start)
    implicit, little = ds.original_encoding
    after = read_dataset(fp, bool(implicit), bool(little))
    if len(after) == 0:
        return
    _check_complete(after, size)
    for tag in after.keys():  # still raw: converted (with ds's character set) when used
        ds[tag] = after.get_item(tag)


def _encapsulated_length(fp: BinaryIO, end: str) -> int:
    """Walk the items of encapsulated pixel data; the byte count up to the delimiter."""
    start = fp.tell()
    while True:
        head = fp.read(8)
        if len(head) < 8:  # truncated: count what is there
            return fp.seek(0, 2) - start
        group, elem, length = struct.unpack(f"{end}HHL", head)
        tag = (group << 16) | elem
        if tag == SEQUENCE_DELIMITER:
            return fp.tell() - 8 - start
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise InvalidDicom("malformed encapsulated Pixel Data (7FE0,0010)")
        fp.seek(length, 1)


def pixel_hash(path: Path, parsed: Parsed) -> str:
    """SHA-256 of the pixel data value ("" when there is none): with the SOP Instance UID,
    what makes two posts the same instance. Read in chunks; only ingest needs it."""
    pixel = parsed.pixel
    if pixel is None:
        return ""
    h = hashlib.sha256()
    if pixel.offset is None:
        h.update(parsed.ds[pixel.tag].value or b"")
        return h.hexdigest()
    with open(path, "rb") as fp:
        fp.seek(pixel.offset)
        remaining = pixel.length
        while remaining > 0:
            chunk = fp.read(min(CHUNK, remaining))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()
