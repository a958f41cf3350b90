"""Reading and validating DICOM files.

``read`` parses every element but the pixel data, and records where the pixel
data element sits in the file, so a 1 GB cine loop is never loaded whole: it is
decoded one frame at a time (``dicomsvc.imaging.decode``), and only ingest
hashes it (``pixel_hash``, in chunks straight from the file). Elements after
the pixel data (Data Set Trailing Padding (FFFC,FFFC), private groups above
7FE0) are read from the bytes after its value (``_read_after_pixels``).

Deflated files (PS3.5 §A.5) are compressed as a whole. pydicom would inflate
them in memory, without limit (a 1 MB upload can inflate to gigabytes), so
``read`` never lets it: it inflates the data set as a stream, at most
``max_inflated`` bytes (TooLarge past it), into an unlinked temporary file next
to the file, parses that as Explicit VR Little Endian, and maps the pixel data
value and any other value over ``CHUNK`` bytes from it (``mmap``): they stay on
disk, and ``parsed.pixel.offset`` is None as for any value held in ``ds``.

The data set is read by ``fastread`` (Explicit and Implicit VR Little Endian, also
inflated): the Dataset pydicom's reader builds, from one read of the header, several
times faster; anything unusual is left to ``dcmread`` for the whole file (``_read_head``).

``pydicom.dcmread`` happily "reads" random bytes, PNGs and truncated files, so
``read`` checks for itself that it got a DICOM instance. Damage that leaves the
data set readable is reported, not refused: unknown VRs are read as UN and stray
delimiters dropped (``warnings``); pixel data cut short or inconsistent with the
Image Pixel module (``pixel_problem``) is stored, but never shown as if whole.
"""

import errno
import hashlib
import mmap
import os
import re
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import xxhash
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import VR

from ..errors import DicomSvcError, InvalidDicom, NotDicom, TooLarge
from . import fastread
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
PIXEL_NAMES = {
    0x7FE00010: "Pixel Data (7FE0,0010)",
    0x7FE00009: "Double Float Pixel Data (7FE0,0009)",
    0x7FE00008: "Float Pixel Data (7FE0,0008)",
}
KNOWN_VRS = frozenset(vr.value for vr in VR)  # PS3.5 Table 6.2-1, and pydicom's ambiguous ones
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}  # storage.space's: left for the caller to answer 507
MAPPED_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}  # binary: inflated values over CHUNK stay on disk
# (0028,0002) Samples per Pixel, (0028,0010) Rows, (0028,0011) Columns, (0028,0100) Bits Allocated,
# (0028,0101) Bits Stored, (0028,0103) Pixel Representation: US, one value (PS3.3 C.7.6.3)
IMAGE_NUMBERS = (0x00280002, 0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280103)
_US = struct.Struct("<H").unpack


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
    # why the pixel data cannot be whole (cut short, inconsistent with Rows, Columns...): it is
    # then never decoded (``decode_frame``, ingest's rendering), and renders answer 415 with this
    pixel_problem: str | None = None

    @property
    def transfer_syntax(self) -> str:
        return str(self.ds.file_meta.get("TransferSyntaxUID", ""))


def read(path: Path, max_inflated: int | None = None) -> Parsed:
    """Parse ``path`` (a file this service owns, e.g. a spool copy) or raise InvalidDicom.

    ``max_inflated``: the most bytes a deflated data set may inflate to (TooLarge past it);
    ingest passes DICOMSVC_MAX_UPLOAD_BYTES, stored files (checked then) pass nothing.
    """
    warnings: list[str] = []
    with open_source(path) as fp:
        _check_header(fp)
        try:
            try:
                ds = _read_head(fp)
            except _Slurp:  # deflated: pydicom would inflate it whole, in memory
                meta, start = _file_meta(fp)
                ds, pixel, problem, size = _read_deflated(fp, path, meta, start, max_inflated, warnings)
            else:
                ds.file_meta  # noqa: B018  (a file without meta still gets an empty one)
                size = _file_size(fp)
                pixel, problem = _pixel_in_file(fp, ds)
                if pixel is not None:
                    _read_after_pixels(fp, ds, pixel)
            _unknown_vrs_as_un(ds, warnings)
            _convert_image_numbers(ds)
            if len(ds) == 0:
                raise InvalidDicom("not a DICOM instance: no data elements after the file meta")
            if pixel is None:
                _check_complete(ds, size)
            else:
                problem = problem or _native_problem(ds, pixel, size)
        except DicomSvcError:
            raise
        except OSError as exc:
            if exc.errno in DISK_FULL:  # inflating a deflated data set: the disk, not the file (507)
                raise
            raise InvalidDicom(f"not a readable DICOM file ({type(exc).__name__})") from None
        except Exception as exc:  # pydicom raises many kinds on broken input
            raise InvalidDicom(f"not a readable DICOM file ({type(exc).__name__})") from None
        sop_uid, uid_warnings = _sop_instance_uid(ds)
    return Parsed(ds=ds, sop_instance_uid=sop_uid, pixel=pixel, warnings=uid_warnings + warnings, pixel_problem=problem)


def open_source(source) -> BinaryIO:
    """A stored file opened for reading: ``source`` is its path, or an object that opens
    itself (``open_binary``: an encrypted blob, ``dicomsvc.storage.blobs.Sealed``, whose
    file object decrypts the chunks a read touches and has no descriptor)."""
    opener = getattr(source, "open_binary", None)
    return opener() if opener is not None else open(source, "rb")


def source_size(source) -> int:
    """The byte size of what ``open_source(source)`` reads (the plaintext of an encrypted blob)."""
    return source.size() if hasattr(source, "open_binary") else os.path.getsize(source)


def _file_size(fp: BinaryIO) -> int:
    size = getattr(fp, "size", None)  # an encrypted blob's reader knows its plaintext size
    return size if isinstance(size, int) else os.fstat(fp.fileno()).st_size


FAST = True  # Little Endian data sets through fastread (tests compare it with pydicom's reader)


def _read_head(fp: BinaryIO) -> FileDataset:
    """``dcmread(fp, force=True, stop_before_pixels=True)``, through ``fastread`` (the same
    data set, built several times faster) unless the file holds anything it leaves to
    pydicom. Either leaves ``fp`` at the pixel data element (or the end of the file)."""
    if FAST:
        try:
            return fastread.read_file(fp, _NoSlurp(fp))[0]
        except fastread.Unusual:
            pass
        except Exception as exc:  # pydicom's file meta reading (it raises again below), or a bug
            fastread.COUNTS[f"error: {type(exc).__name__}"] += 1
        fp.seek(0)
    return dcmread(_NoSlurp(fp), force=True, stop_before_pixels=True)


class _Slurp(Exception):
    """pydicom asked for all the rest of the file at once."""


class _NoSlurp:
    """The file as ``dcmread`` reads it, except that reading "all the rest" raises _Slurp:
    pydicom does that once, in one place, to inflate a deflated data set whole in memory
    (``read_partial``), after reading the file meta as for any file.

    It also keeps the position itself: pydicom asks ``tell()`` once or twice an element,
    and a buffered file answers that with an lseek system call (about 1 µs each, a fifth
    of the parse of a CT header)."""

    __slots__ = ("_read", "_seek", "_pos", "fileno", "name")

    def __init__(self, fp: BinaryIO):
        self._read, self._seek, self._pos, self.fileno, self.name = fp.read, fp.seek, fp.tell(), fp.fileno, fp.name

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise _Slurp()
        data = self._read(size)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = self._seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _file_meta(fp: BinaryIO) -> tuple[FileMetaDataset, int]:
    """The file meta group (PS3.10 §7.1) as ``dcmread`` reads it, and where the data set starts."""
    fp.seek(0)
    read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    if str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:  # pydicom's only slurp
        raise InvalidDicom("not a readable DICOM file (an unexpected read)")
    return meta, fp.tell()


def _read_deflated(
    fp: BinaryIO, path: Path, meta: FileMetaDataset, start: int, cap: int | None, warnings: list[str]
) -> tuple[Dataset, PixelElement | None, str | None, int]:
    """Deflated Explicit VR Little Endian (PS3.5 §A.5): the data set after the file meta
    is one raw deflate stream. Inflated into a temporary file, parsed from it; large
    binary values and the pixel data mapped from it (the file is unlinked: the mapping
    holds it until the data set is gone)."""
    fp.seek(start)
    # an encrypted blob's plaintext is inflated in memory (memfd), never onto the disk
    with _inflate(fp, path.parent if isinstance(path, Path) else None, cap, warnings) as inflated:
        size = os.fstat(inflated.fileno()).st_size
        whole = None
        if size:
            try:
                whole = mmap.mmap(inflated.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, MemoryError):  # ENOMEM: over the worker's address space limit
                raise TooLarge(
                    f"the deflated data set inflates to {size} bytes, more than this worker can map "
                    "(DICOMSVC_WORKER_MEMORY)"
                ) from None
        dataset = _inflated_dataset(inflated, whole)
        ds = FileDataset(str(path), dataset, None, meta, False, True)
        ds.set_original_encoding(False, True, dataset._character_set)
        pixel, problem = _pixel_in_file(inflated, ds)
        if pixel is not None:
            _read_after_pixels(inflated, ds, pixel)
        if whole is None:
            return ds, None, None, size
        mapped = memoryview(whole)
    _map_deferred(ds, mapped)
    if pixel is not None:
        problem = problem or _native_problem(ds, pixel, size)
        value = mapped[pixel.offset : pixel.offset + pixel.length]
        element = DataElement(pixel.tag, pixel.vr, value, is_undefined_length=pixel.encapsulated,
                              validation_mode=pydicom_config.IGNORE)  # fmt: skip
        ds[pixel.tag] = element
        pixel = PixelElement(pixel.tag, pixel.vr, None, len(value), pixel.encapsulated)
    return ds, pixel, problem, size


def _inflated_dataset(inflated: BinaryIO, whole: mmap.mmap | None) -> Dataset:
    """The inflated data set (Explicit VR Little Endian) up to the pixel data, values over
    ``CHUNK`` bytes deferred, as ``read_dataset`` reads it: through ``fastread`` over the
    mapped bytes unless they hold anything it leaves to pydicom. Leaves ``inflated`` at the
    pixel data element (or the end)."""
    if FAST and whole is not None:
        try:
            dataset, stop = fastread.read_dataset(whole, 0, False, True, CHUNK)
        except fastread.Unusual as exc:
            fastread.COUNTS[f"pydicom: {exc}"] += 1
        except Exception as exc:  # a bug: pydicom's reader decides
            fastread.COUNTS[f"error: {type(exc).__name__}"] += 1
        else:
            fastread.COUNTS["fast"] += 1
            inflated.seek(stop)
            return dataset
        inflated.seek(0)
    return read_dataset(inflated, False, True, stop_when=_at_pixels, defer_size=CHUNK)


def _inflate(fp: BinaryIO, folder: Path | None, cap: int | None, warnings: list[str]) -> BinaryIO:
    """The rest of ``fp`` inflated (raw deflate, RFC 1951) into an unlinked temporary file in
    ``folder`` (the data disk; the system's temporary folder if that cannot be written; an
    anonymous memory file, memfd_create(2), for None), ``CHUNK`` bytes at a time, never more
    than ``cap`` bytes in all (TooLarge)."""
    if folder is None:
        out = os.fdopen(os.memfd_create("inflated", os.MFD_CLOEXEC), "w+b")
    else:
        try:
            out = tempfile.TemporaryFile(dir=folder)
        except OSError:
            out = tempfile.TemporaryFile()
    try:
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof:
            pending = fp.read(CHUNK)
            if not pending:
                warnings.append("the deflated data set (PS3.5 §A.5) ends before its deflate stream does")
                break
            while pending and not inflater.eof:
                chunk = inflater.decompress(pending, CHUNK)
                total += len(chunk)
                if cap is not None and total > cap:
                    raise TooLarge(f"the deflated data set inflates to more than {cap} bytes, the size limit")
                out.write(chunk)
                pending = inflater.unconsumed_tail
        out.flush()
        out.seek(0)
        return out
    except zlib.error:
        out.close()
        raise InvalidDicom("not a readable DICOM file: the deflated data set (PS3.5 §A.5) is corrupt") from None
    except BaseException:
        out.close()
        raise


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in PIXEL_TAGS


def _map_deferred(ds: Dataset, mapped: memoryview) -> None:
    """Values ``read_dataset`` deferred (over ``CHUNK`` bytes): binary ones as views of the
    inflated file, on disk; others (text, sequences of defined length) read into memory."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length not in (0, UNDEFINED_LENGTH):
            view = mapped[raw.value_tell : raw.value_tell + raw.length]
            ds[tag] = raw._replace(value=view if raw.VR in MAPPED_VRS else bytes(view))


def _unknown_vrs_as_un(ds: Dataset, warnings: list[str]) -> None:
    """Elements of VRs PS3.5 does not define (a zero-length ``ZZ``, a ``UH`` in the file
    meta) are read as UN (PS3.5 §6.2.2: pydicom then uses the dictionary's VR for known
    tags); item and delimitation tags (FFFE,xxxx) outside any sequence (PS3.5 §7.5) are
    not data elements, and are dropped. Each is named in ``warnings``."""
    for dataset in (getattr(ds, "file_meta", None), ds):
        if dataset is None:
            continue
        # as read, without converting anything (implicit VR elements have no VR yet)
        odd = [e for e in dataset.values() if e.tag >> 16 == 0xFFFE or e.VR is not None and e.VR not in KNOWN_VRS]
        for raw in odd:
            tag = raw.tag
            if tag >> 16 == 0xFFFE:
                del dataset[tag]
                warnings.append(f"a stray item or delimitation tag {_tag(tag)} outside any sequence was ignored (PS3.5 §7.5)")
            elif isinstance(raw, RawDataElement):
                dataset[tag] = raw._replace(VR="UN")
                warnings.append(f"{_tag(tag)} has no valid VR (PS3.5 §6.2): read as UN")


def _convert_image_numbers(ds: Dataset) -> None:
    """Convert the Image Pixel module's US elements (PS3.3 C.7.6.3) that every ingest reads
    (``_native_problem``, decoding): the DataElement pydicom's ``Dataset.__getitem__`` would
    make of each (``convert_raw_data_element``: the VR, the number, ``value_tell``), built
    here from its two bytes, without pydicom's hooks (~30 µs an element). Only for what
    pydicom reads plainly: a raw Explicit VR Little Endian US of one value, no
    ``data_element_callback``; anything else is left for pydicom to convert when used."""
    if pydicom_config.data_element_callback is not None:
        return
    for tag in IMAGE_NUMBERS:
        raw = ds.get_item(tag, keep_deferred=True)
        if type(raw) is RawDataElement and raw.VR == "US" and raw.is_little_endian and raw.length == 2:
            value = raw.value
            if type(value) is bytes and len(value) == 2:
                ds[tag] = DataElement(raw.tag, "US", _US(value)[0], raw.value_tell, False, already_converted=True)


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _check_header(fp: BinaryIO) -> None:
    """A Part 10 file has 'DICM' at 128; a bare dataset must start with a sane tag."""
    reason = sniff(fp.read(HEAD_BYTES))
    fp.seek(0)
    if reason:
        raise NotDicom(reason)


def _check_complete(ds: Dataset, file_size: int) -> None:
    """pydicom silently returns what it could read of a cut file: check the last element."""
    last = ds.get_item(max(ds.keys()), keep_deferred=True)
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


def _pixel_in_file(fp: BinaryIO, ds: Dataset) -> tuple[PixelElement | None, str | None]:
    """Read the pixel data element's header where dcmread stopped; and, for encapsulated
    pixel data, what is wrong with its items (``_encapsulated_length``)."""
    _, little = ds.original_encoding
    if little is None:  # nothing was read: an empty dataset
        return None, None
    end = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8:
        return None, None
    group, elem = struct.unpack(f"{end}HH", head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_TAGS:
        return None, None
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
        return PixelElement(tag, vr, offset, length, encapsulated=False), None
    length, fragments, problem = _encapsulated_length(fp, end)
    frames = frame_count(ds)
    if problem is None and fragments < frames:
        problem = (
            f"the encapsulated {PIXEL_NAMES[tag]} has {fragments} fragments for {frames} frames "
            "(PS3.5 §A.4: each frame takes one or more)"
        )
    return PixelElement(tag, vr, offset, length, encapsulated=True), problem


def _native_problem(ds: Dataset, pixel: PixelElement, size: int) -> str | None:
    """Why native pixel data cannot be whole: its value runs past the end of the file, or
    is shorter than (0028,0010) Rows × (0028,0011) Columns × (0028,0002) Samples per Pixel ×
    (0028,0100) Bits Allocated / 8 × (0028,0008) Number of Frames (PS3.5 §8.1.1; YBR_FULL_422
    holds two samples a pixel, PS3.3 §C.7.6.3.1.2). None when it can be whole, or when those
    attributes are missing or unreadable (decoding then says what is wrong)."""
    if pixel.encapsulated:
        return None
    name = PIXEL_NAMES[pixel.tag]
    if pixel.offset is not None and pixel.offset + pixel.length > size:
        held = max(size - pixel.offset, 0)
        return f"truncated file: the {name} value is {pixel.length} bytes long and the file holds {held} of them"
    try:
        rows, columns = int(ds.get("Rows")), int(ds.get("Columns"))
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated"))
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    except Exception:  # missing (None), several values, unreadable
        return None
    if min(rows, columns, samples, bits) <= 0:
        return None
    if photometric == "YBR_FULL_422" and samples == 3:
        samples = 2
    needed = (rows * columns * samples * bits * frame_count(ds) + 7) // 8
    if pixel.length < needed:
        return (
            f"the {name} value holds {pixel.length} bytes; Rows × Columns × Samples per Pixel × "
            f"Bits Allocated / 8 × Number of Frames make {needed} (PS3.5 §8.1.1)"
        )
    return None


def frame_count(ds: Dataset) -> int:
    """(0028,0008) Number of Frames, 1 when absent; read as dcmtk does when malformed ("1A")."""
    try:
        raw = ds.get("NumberOfFrames")
    except Exception:  # a value pydicom refuses to convert: read the bytes
        raw = ds.get_item(0x00280008, keep_deferred=True).value
        raw = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if raw is None or raw == "":
        return 1
    try:
        count = int(raw)
    except (TypeError, ValueError):
        digits = re.match(r"\s*(\d+)", str(raw))
        count = int(digits.group(1)) if digits else 1
    return max(count, 1)


def _read_after_pixels(fp: BinaryIO, ds: Dataset, pixel: PixelElement) -> None:
    """Add to ``ds`` the elements that follow the pixel data's value in the file.

    ``dcmread(stop_before_pixels=True)`` stops at the pixel data element and never
    reads what comes after it, so this seeks past the value (and the sequence
    delimiter of encapsulated data) and reads the rest with pydicom's reader, in
    the encoding pydicom found for the data set.
    """
    size = _file_size(fp)
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
        ds[tag] = after.get_item(tag, keep_deferred=True)


def _encapsulated_length(fp: BinaryIO, end: str) -> tuple[int, int, str | None]:
    """Walk the items of encapsulated pixel data (PS3.5 §A.4): the byte count up to the
    Sequence Delimitation Item, the number of fragments (items after the Basic Offset
    Table), and what is wrong if the file ends first (then the count is what is there)."""
    start = fp.tell()
    size = _file_size(fp)
    items = 0
    while True:
        head = fp.read(8)
        if len(head) < 8:  # truncated: count what is there
            problem = (
                "truncated file: the encapsulated Pixel Data (7FE0,0010) has no Sequence Delimitation "
                "Item (FFFE,E0DD); the file ends inside it (PS3.5 §A.4)"
            )
            return fp.seek(0, 2) - start, max(items - 1, 0), problem
        group, elem, length = struct.unpack(f"{end}HHL", head)
        tag = (group << 16) | elem
        if tag == SEQUENCE_DELIMITER:
            return fp.tell() - 8 - start, max(items - 1, 0), None
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise InvalidDicom("malformed encapsulated Pixel Data (7FE0,0010)")
        items += 1
        if fp.tell() + length > size:
            problem = (
                "truncated file: an item of the encapsulated Pixel Data (7FE0,0010) "
                "runs past the end of the file (PS3.5 §A.4)"
            )
            return size - start, max(items - 1, 0), problem
        fp.seek(length, 1)


PIXEL_DIGEST = "xxh3:"  # what begins a stored pixel_hash; rows stored before it hold SHA-256 hex


def pixel_hash(path: Path, parsed: Parsed, legacy: bool = False) -> str:
    """The pixel data value's digest, ``xxh3:`` and XXH3-128 in hex ("" when there is none):
    with the SOP Instance UID, what makes two posts the same instance. Read in chunks; only
    ingest needs it. ``legacy``: the SHA-256 hex that rows stored before it hold
    (``is_legacy_hash``), computed only when such a row has the instance's UID.

    An identity check, not a seal: XXH3 (``xxhash``) is ~30x cheaper than SHA-256 (0.01
    against 0.26 ms for a 512x512 CT, 0.3 ms of an ingest's ~4 ms; issue 12), and a collision
    made on purpose gains nothing SHA-256 would deny: the identity is (UID, pixels) only, so
    a client who knows an instance's pixels can post them under its UID anyway."""
    pixel = parsed.pixel
    if pixel is None:
        return ""
    h = hashlib.sha256() if legacy else xxhash.xxh3_128()
    if pixel.offset is None:
        h.update(parsed.ds[pixel.tag].value or b"")
    else:
        with open(path, "rb") as fp:
            fp.seek(pixel.offset)
            remaining = pixel.length
            while remaining > 0:
                chunk = fp.read(min(CHUNK, remaining))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
    return h.hexdigest() if legacy else PIXEL_DIGEST + h.hexdigest()


def is_legacy_hash(stored: str) -> bool:
    """Whether a stored pixel_hash is the SHA-256 hex of a row stored before ``PIXEL_DIGEST``."""
    return bool(stored) and not stored.startswith(PIXEL_DIGEST)
