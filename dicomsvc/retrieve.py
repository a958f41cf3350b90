"""What is made from a stored instance on request: renderings, arrays, DICOM JSON, bulk data,
WADO-RS instances in Explicit VR Little Endian and frames.

Plain synchronous code, run in the workers (``dicomsvc.service.Service.cpu``) or an
I/O thread; the counterpart of ``ingest`` on the read side. Each reads the stored
DICOM blob, never the whole pixel data: only the frames asked for are decoded.
"""

import functools
import itertools
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .config import Config
from .dicom import dicomjson
from .dicom.parse import CHUNK, Parsed, frame_count, open_source, read
from .dicom.tags import flatten
from .errors import NoPixelData, UnsupportedTransferSyntax
from .imaging import arrays, renderings
from .imaging.decode import decode_frame
from .results import deleted_is_404  # the server uses it too: defined where it can import it
from .storage import space
from .storage.blobs import BlobStore


def render_and_keep(config: Config, dcm_blob: str, params: renderings.RenderParams, cached: Path) -> bytes:
    """Render from the stored DICOM and keep the result: temp name, then rename.

    A DELETE that removed the instance's renderings folder between the reading and the
    keeping leaves this one behind: the caller checks the row afterwards
    (``dicomsvc.http.instances.rendering``). On a full disk, or with the folder removed
    under it by that DELETE, the rendering is answered without being kept: the cache is a
    saving, not a promise."""
    blobs = BlobStore.of(config)
    path = blobs.stored(dcm_blob)
    with deleted_is_404(path):
        body = renderings.render(path, read(path), params)
    _keep(blobs, body, params, cached)
    return body


def rerender_and_keep(config: Config, png_blob: str, params: renderings.RenderParams, cached: Path) -> bytes:
    """As ``render_and_keep``, for frame 1 with the file's own VOI (DICOMweb thumbnails): made
    from the PNG stored at ingest, its display pixels -- a 512 x 512 CT's in half the time."""
    blobs = BlobStore.of(config)
    path = blobs.stored(png_blob)  # read_bytes: decrypted when encrypted
    with deleted_is_404(path):
        body = renderings.from_display(path.read_bytes(), params)
    _keep(blobs, body, params, cached)
    return body


def _keep(blobs: BlobStore, body: bytes, params: renderings.RenderParams, cached: Path) -> None:
    temp = None
    try:
        temp = blobs.write_temp(body, f".{params.format}", final=cached)  # encrypted for its name
        cached.parent.mkdir(exist_ok=True)
        os.replace(temp, cached)
        blobs.share(cached)  # with S3: into the bucket, for every replica
    except OSError as exc:
        # The cache is best effort: a full disk, or a DELETE removing the folder meanwhile
        # (mkdir then sees it vanish: FileNotFoundError, or FileExistsError mid-rmtree)
        if not (space.is_full(exc) or isinstance(exc, (FileNotFoundError, FileExistsError))):
            raise
        blobs.discard(temp)


def write_npy(config: Config, dcm_blob: str, frame: int | None, rescale: bool) -> Path:
    """The pixel data as a temporary ``.npy`` file, a frame at a time; the caller removes it."""
    blobs = BlobStore.of(config)
    path = blobs.stored(dcm_blob)
    with deleted_is_404(path), space.full_is_507():
        _, chunks = arrays.npy_stream(path, read(path), frame, rescale)
        temp, out = blobs.create_temp(".npy")
        try:
            with out:
                for chunk in chunks:
                    out.write(chunk)
        except BaseException:
            blobs.discard(temp)
            raise
    return temp


def dicom_json(config: Config, dcm_blob: str, bulk_base: str) -> dict:
    """The DICOM JSON model (PS3.18 Annex F), bulk data as ``bulk_base`` + element path."""
    path = BlobStore.of(config).stored(dcm_blob)
    with deleted_is_404(path):
        parsed = read(path)
    return dicomjson.to_dicom_json(parsed.ds, lambda element: bulk_base + element, pixel=parsed.pixel)


def stored_metadata(config: Config, instances: list[dict]) -> list[tuple[int, str]]:
    """(pk, DICOM JSON text) of instances stored before ingest kept it (WADO-RS metadata),
    made from their files as ingest makes it; each dict has pk, dcm_blob and the three UIDs.
    An instance whose file cannot be read (deleted meanwhile) is left out: it is not shown."""
    blobs, out = BlobStore.of(config), []
    for row in instances:
        try:
            parsed = read(blobs.stored(row["dcm_blob"]))
            text = dicomjson.stored_metadata(
                parsed, flatten(parsed.ds, parsed.pixel),
                row["study_instance_uid"], row["series_instance_uid"], row["sop_instance_uid"],
            )  # fmt: skip
        except Exception:  # not a client's fault; the others are still answered
            continue
        out.append((row["pk"], text))
    return out


def bulk(path: Path, element_path: str) -> tuple[int, Iterator[bytes]]:
    """One binary value of the stored file: its length and its chunks.

    The first chunk is read here, before the answer starts: that opens the file, so a
    later DELETE unlinks a name, not the file being sent (the stream is whole).
    """
    with deleted_is_404(path):
        size, chunks = dicomjson.bulk_stream(path, read(path), element_path)
        first = next(chunks, None)
    return size, itertools.chain(() if first is None else (first,), chunks)


# WADO-RS (PS3.18 §10.4): whole instances in Explicit VR Little Endian, and frames ------------

EXPLICIT_LE = ExplicitVRLittleEndian
# (7FE0,0001) Extended Offset Table, (7FE0,0002) Extended Offset Table Lengths: encapsulated only
EXTENDED_OFFSET_TAGS = (0x7FE00001, 0x7FE00002)
TRAILING_PADDING = 0xFFFCFFFC  # (FFFC,FFFC) Data Set Trailing Padding
YBR_PHOTOMETRICS = {"YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}


@functools.lru_cache(maxsize=64)
def decodable(transfer_syntax: str | None) -> bool:
    """Whether pixel data in ``transfer_syntax`` can be decoded here (a pydicom decoder with a
    plugin installed); native syntaxes always can."""
    if not transfer_syntax or transfer_syntax in NATIVE_SYNTAXES:
        return True
    try:
        return get_decoder(UID(transfer_syntax)).is_available
    except (NotImplementedError, ValueError):
        return False


def write_explicit_le(config: Config, dcm_blob: str) -> Path:
    """The stored instance re-encoded in Explicit VR Little Endian (PS3.5 §A.2) as a temporary
    file (the caller streams and removes it): pixel data decompressed a frame at a time, so
    only one decoded frame is ever in memory.

    Changed on the way, as decompression requires: (0002,0010) Transfer Syntax UID; for
    colour data the decoder turned into RGB (YBR_* of JPEG, JPEG 2000, RLE), (0028,0004)
    Photometric Interpretation becomes RGB and (0028,0006) Planar Configuration 0 (pixel
    by pixel, as the decoder gives them); the Extended Offset Table (7FE0,0001/0002), which
    only encapsulated data has, is dropped. Group lengths (gggg,0000) and Data Set Trailing
    Padding (FFFC,FFFC) are left out: they describe the old encoding. Elements read as
    they were (Implicit VR ones get their VR from the dictionary, unknown ones UN).
    """
    blobs = BlobStore.of(config)
    path = blobs.stored(dcm_blob)
    parsed = read(path)
    temp, out = blobs.create_temp(".dcm")
    try:
        with out:
            _write_explicit_le(path, parsed, out)
    except BaseException:
        blobs.discard(temp)
        raise
    return temp


def _write_explicit_le(path: Path, parsed: Parsed, out) -> None:
    ds, pixel = parsed.ds, parsed.pixel
    stored = UID(parsed.transfer_syntax or ImplicitVRLittleEndian)
    skip = {TRAILING_PADDING, *((pixel.tag, *EXTENDED_OFFSET_TAGS) if pixel is not None else ())}
    before, after = Dataset(), Dataset()
    pixel_tag = pixel.tag if pixel is not None else 0x7FE00010
    for tag in ds.keys():
        if tag in skip or tag & 0xFFFF == 0:
            continue
        (before if tag < pixel_tag else after)[tag] = ds[tag]  # converted with the data set's character set
    for part in (before, after):
        part.set_original_encoding(False, True, ds.original_character_set)
    raw_copy = pixel is not None and pixel.offset is not None and not pixel.encapsulated and stored in (
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
    )
    frames = frame_count(ds) if pixel is not None else 0
    frame_size = None
    if pixel is not None and not raw_copy:
        frame_size = _native_frame_size(ds)  # big endian, deflated or encapsulated: decoded
        if pixel.encapsulated and _decodes_to_rgb(ds):
            before[0x00280004] = DataElement(0x00280004, "CS", "RGB")  # (0028,0004) Photometric Interpretation
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
            before[0x00280006] = DataElement(0x00280006, "US", 0)  # (0028,0006) Planar Configuration
    meta = FileMetaDataset()  # a new one: FileMetaDataset(ds.file_meta) would share its elements
    for tag in ds.file_meta.keys():
        if tag != 0x00020000:  # (0002,0000) File Meta Information Group Length: pydicom writes it
            meta[tag] = ds.file_meta[tag]
    meta[0x00020010] = DataElement(0x00020010, "UI", EXPLICIT_LE)  # (0002,0010) Transfer Syntax UID
    before.file_meta = meta
    dcmwrite(out, before, implicit_vr=False, little_endian=True, enforce_file_format=True)
    if pixel is None:
        _write_after(out, after)
        return
    vr = pixel.vr if pixel.tag != 0x7FE00010 else ("OW" if int(ds.get("BitsAllocated", 16) or 16) > 8 else "OB")
    if raw_copy:
        length = pixel.length
    else:
        length = frames * frame_size
    pad = length % 2
    group, element = pixel.tag >> 16, pixel.tag & 0xFFFF
    out.write(struct.pack("<HH2sHL", group, element, vr.encode("ascii"), 0, length + pad))
    if raw_copy:
        with open_source(path) as src:
            src.seek(pixel.offset)
            remaining = length
            while remaining > 0:
                chunk = src.read(min(CHUNK, remaining))
                if not chunk:
                    raise UnsupportedTransferSyntax("the stored pixel data is shorter than its header says")
                out.write(chunk)
                remaining -= len(chunk)
    else:
        for index in range(frames):
            out.write(_native_frame(path, parsed, index, frame_size))
    if pad:
        out.write(b"\x00")
    _write_after(out, after)


def _write_after(out, after: Dataset) -> None:
    """Elements that follow the pixel data (private groups above 7FE0), Explicit VR Little Endian."""
    if len(after) == 0:
        return
    fp = DicomFileLike(out)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, after)


def _decodes_to_rgb(ds: Dataset) -> bool:
    """Colour data that pydicom's decoders hand back as RGB (``as_rgb``, as ``pixel_array`` does)."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    return int(ds.get("SamplesPerPixel", 1) or 1) == 3 and photometric in YBR_PHOTOMETRICS


def _native_frame_size(ds: Dataset) -> int:
    """Bytes of one uncompressed frame: (0028,0010) Rows × (0028,0011) Columns ×
    (0028,0002) Samples per Pixel × (0028,0100) Bits Allocated / 8 (PS3.5 §8.1.1)."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 8) or 8)
    pixels = rows * columns * samples
    return (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)


def _native_frame(path: Path, parsed: Parsed, index: int, size: int) -> bytes:
    """Frame ``index`` (0-based) decoded, as little-endian native bytes of ``size`` bytes."""
    arr = decode_frame(path, parsed, index)
    bits = int(parsed.ds.get("BitsAllocated", 8) or 8)
    if bits == 1:  # PS3.5 §8.1.1: single bits, packed little-endian bit order
        data = np.packbits(arr.astype(bool).ravel(), bitorder="little").tobytes()
    else:
        if arr.dtype.itemsize * 8 != bits and arr.dtype.kind in "iu" and bits in (8, 16, 32, 64):
            arr = arr.astype(f"{arr.dtype.kind}{bits // 8}")
        data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    if len(data) != size:
        raise UnsupportedTransferSyntax(
            f"frame {index + 1} decoded to {len(data)} bytes, not the {size} its Rows, Columns, "
            "Samples per Pixel and Bits Allocated make"
        )
    return data


def decoded_frames(config: Config, dcm_blob: str, indexes: list[int]) -> list[bytes]:
    """Frames (0-based ``indexes``) as uncompressed little-endian bytes, decoded here (a worker)."""
    path = BlobStore.of(config).stored(dcm_blob)
    parsed = read(path)
    if parsed.pixel is None:
        raise NoPixelData("this instance has no pixel data")
    size = _native_frame_size(parsed.ds)
    return [_native_frame(path, parsed, index, size) for index in indexes]


class FrameSource:
    """Frames read from the stored file without decoding (in an I/O thread): native
    little-endian frames by offset, compressed frames as their fragments joined
    (PS3.5 §A.4: one frame's fragments; PS3.18 §8.7.3.3.2: compressed bulk data without
    the item delimiters)."""

    def __init__(self, path: Path):
        self.path = path
        self.parsed = read(path)
        if self.parsed.pixel is None:
            raise NoPixelData("this instance has no pixel data")
        self.frames = frame_count(self.parsed.ds)

    @property
    def raw_native(self) -> bool:
        """Frames can be cut from the file as they are: little-endian native data, whole bytes."""
        pixel = self.parsed.pixel
        syntax = self.parsed.transfer_syntax or ImplicitVRLittleEndian
        bits = int(self.parsed.ds.get("BitsAllocated", 8) or 8)
        little_endian = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
        return not pixel.encapsulated and syntax in little_endian and bits % 8 == 0

    def native(self, index: int) -> bytes:
        size = _native_frame_size(self.parsed.ds)
        pixel = self.parsed.pixel
        if pixel.offset is None:  # deflated: inflated in memory
            data = bytes(self.parsed.ds[pixel.tag].value[index * size : (index + 1) * size])
        else:
            with open_source(self.path) as src:
                src.seek(pixel.offset + index * size)
                data = src.read(size)
        if len(data) != size:
            raise UnsupportedTransferSyntax(f"the stored pixel data ends before frame {index + 1}")
        return data

    def compressed(self, index: int) -> bytes:
        ds, pixel = self.parsed.ds, self.parsed.pixel
        extended = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        try:
            if pixel.offset is None:  # held in memory
                return get_frame(ds[pixel.tag].value, index, extended_offsets=extended, number_of_frames=self.frames)
            with open_source(self.path) as src:
                src.seek(pixel.offset)
                return get_frame(src, index, extended_offsets=extended, number_of_frames=self.frames)
        except (ValueError, KeyError, struct.error) as exc:
            raise UnsupportedTransferSyntax(
                f"frame {index + 1} could not be found in the encapsulated pixel data ({type(exc).__name__})"
            ) from None


RECENT_SOURCES = 64  # frame sources kept parsed (a few KiB each: no pixel data)
_sources: OrderedDict[Path, FrameSource] = OrderedDict()
_sources_lock = threading.Lock()


def frame_source(path: Path) -> FrameSource:
    """The ``FrameSource`` of a stored file, kept parsed for the next requests of its frames
    (a viewer asks for them one by one): stored files never change, and a deleted one is not
    looked up again. Deflated files hold their pixel data in memory, so they are not kept."""
    with _sources_lock:
        source = _sources.get(path)
        if source is not None:
            _sources.move_to_end(path)
            return source
    source = FrameSource(path)
    if source.parsed.pixel.offset is not None:
        with _sources_lock:
            _sources[path] = source
            while len(_sources) > RECENT_SOURCES:
                _sources.popitem(last=False)
    return source
