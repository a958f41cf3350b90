"""Decoding one frame of pixel data, reading only what that frame needs.

Every transfer syntax pydicom decodes with the pylibjpeg, openjpeg and RLE plugins.
Before a decoder sees a frame, its decoded size is checked against the limit and a
compressed frame's own header against the data set (``precheck``).

Native little-endian integer frames (the common uncompressed CT/MR/CR case) skip
pydicom's decoder: the frame's bytes are read straight into an array and its unused
high bits cleared or sign-extended (``_native_layout``, ``_read_native``), giving the
same values in about a third of the time; pydicom decodes everything else.
"""

import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..dicom.parse import Parsed, frame_count, open_source
from ..errors import DicomSvcError, NoPixelData, UnsupportedTransferSyntax, WorkerMemory
from . import precheck

# DICOMSVC_MAX_FRAME_BYTES for this process: the service sets it in each worker
_max_frame_bytes = precheck.DEFAULT_MAX_FRAME_BYTES

# Frames decoded by each path in this process: "native" (``_read_native``) or "pydicom"
PATHS: Counter = Counter()
# Native little-endian frames read directly (``_native_layout``); False sends every frame
# through pydicom's decoder (the tests compare the two)
FAST_NATIVE = True
LITTLE_ENDIAN_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}


def set_max_frame_bytes(limit: int) -> None:
    """The largest decoded frame this process will decode (DICOMSVC_MAX_FRAME_BYTES)."""
    global _max_frame_bytes
    _max_frame_bytes = limit


def decode_frame(path: Path, parsed: Parsed, index: int = 0, *, as_rgb: bool = True) -> np.ndarray:
    """Decode one frame, reading only what that frame needs from ``path``.

    YBR_FULL and YBR_FULL_422 come back converted to RGB by pydicom, as
    ``Dataset.pixel_array`` has them; with ``as_rgb=False`` they come back as
    decoded (YBR_FULL_422 native data upsampled to one Cb/Cr per pixel), for a
    caller that converts them itself (``render.display_frame``, as dcmtk does).
    """
    return decode_frame_unmasked(path, parsed, index, as_rgb=as_rgb, unmasked=False)[0]


def decode_frame_unmasked(
    path: Path, parsed: Parsed, index: int = 0, *, as_rgb: bool = True, unmasked: bool = True
) -> tuple[np.ndarray, int | None]:
    """``decode_frame``, except that a native frame read directly (``_read_native``) may
    come back with the bits above (0028,0101) Bits Stored as the file holds them, for a
    caller that clears or sign-extends them in a pass of its own (``render.to_display``
    does it in its lookup table). Returns the frame and, when it was left so, Bits
    Stored (``mask_unused_bits(frame, bits)`` gives ``decode_frame``'s values); else None.
    """
    pixel = parsed.pixel
    if pixel is None:
        raise NoPixelData("this instance has no pixel data")
    if parsed.pixel_problem:  # cut short or inconsistent (``parse``): never shown as if whole
        raise UnsupportedTransferSyntax(parsed.pixel_problem)
    ds = parsed.ds
    tsyntax = UID(parsed.transfer_syntax or _guess_syntax(ds))
    try:
        decoder = get_decoder(tsyntax)
        if pixel.offset is None:  # held in memory (deflated files)
            src = ds
            opts = _pixel_options(ds)
        else:
            opts = _pixel_options(
                ds, transfer_syntax_uid=tsyntax, pixel_keyword=pixel.keyword, pixel_vr=pixel.vr
            )
            layout = _native_layout(tsyntax, opts, index, as_rgb) if FAST_NATIVE else None
            if layout is not None:
                _precheck(tsyntax, None, index, opts)
                arr = _read_native(path, pixel.offset, layout, unmasked)
                if arr is not None:
                    PATHS["native"] += 1
                    left = unmasked and layout.bits_stored < layout.bits_allocated
                    return arr, layout.bits_stored if left else None
            src = open_source(path)  # a path, or an encrypted blob (decrypting only what is read)
            src.seek(pixel.offset)
        try:
            frame = _precheck(tsyntax, src, index, opts)
            if frame is not None and src is not ds:  # decode the bytes checked: read once
                src.close()
                src, index = encapsulate([frame], has_bot=False), 0
                opts = {k: v for k, v in opts.items() if k != "extended_offsets"} | {"number_of_frames": 1}
            arr, _ = decoder.as_array(src, index=index, validate=True, as_rgb=as_rgb, **opts)
            PATHS["pydicom"] += 1
        finally:
            if src is not ds and not isinstance(src, bytes):
                src.close()
    except (DicomSvcError, FileNotFoundError):
        # FileNotFoundError: the stored file vanished before its frame was read (a DELETE got
        # there first): the caller's ``results.deleted_is_404`` answers 404, never 415
        raise
    except MemoryError:  # over the worker's memory limit: the service answers 413
        raise WorkerMemory("decoding the frame needed more memory than a worker may use") from None
    except Exception as exc:  # unsupported syntax, missing plugin, corrupt or short data
        raise UnsupportedTransferSyntax(_decode_failure(tsyntax, exc)) from None
    except BaseException as exc:
        # pylibjpeg-rle (Rust, pyo3) panics on some corrupt segments with
        # pyo3_runtime.PanicException, a BaseException that `except Exception` misses
        if type(exc).__module__ != "pyo3_runtime":
            raise
        raise UnsupportedTransferSyntax(_decode_failure(tsyntax, exc)) from None
    return arr, None


class NativeLayout(NamedTuple):
    """Where and how frame ``index`` of native Pixel Data lies (``_native_layout``)."""

    dtype: np.dtype
    rows: int
    columns: int
    samples: int
    planar: int
    bits_allocated: int
    bits_stored: int
    index: int


def _native_layout(tsyntax: UID, opts: dict, index: int, as_rgb: bool) -> NativeLayout | None:
    """How frame ``index`` lies in native little-endian Pixel Data, when it can be read as
    plain integers exactly as pydicom's native decoder would give it; None for anything
    else (compressed or big-endian syntaxes, float pixel data, 1-bit or 64-bit samples,
    YBR data pydicom would convert, missing or out-of-range attributes), which pydicom's
    decoder then decodes or refuses with its own message.

    PS3.5 §8.1.1: each sample takes Bits Allocated bits (8, 16 or 32 here), little-endian
    (PS3.5 §A.1, §A.2), frames one after another; PS3.3 §C.7.6.3.1.3: with (0028,0006)
    Planar Configuration 1 the three colour planes follow one another within a frame.
    The checks are those of pydicom 3.0's ``RunnerBase._validate_options``.
    """
    if tsyntax not in LITTLE_ENDIAN_SYNTAXES or sys.byteorder != "little":
        return None
    if opts.get("pixel_keyword") != "PixelData":  # (7FE0,0010): not Float/Double Float
        return None
    # (0028,0010) Rows, (0028,0011) Columns, (0028,0100) Bits Allocated, (0028,0101) Bits
    # Stored, (0028,0103) Pixel Representation, (0028,0002) Samples per Pixel, (0028,0008)
    # Number of Frames (as read by as_pixel_options / _pixel_options)
    keys = ("rows", "columns", "bits_allocated", "bits_stored", "pixel_representation", "samples_per_pixel",
            "number_of_frames")  # fmt: skip
    values = [opts.get(key) for key in keys]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    rows, columns, allocated, stored, signed, samples, frames = (int(v) for v in values)
    if not (0 < rows <= 0xFFFF and 0 < columns <= 0xFFFF and 0 <= index < frames):
        return None
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated or signed not in (0, 1):
        return None
    # (0028,0004) Photometric Interpretation
    photometric = opts.get("photometric_interpretation")
    planar = 0
    if samples == 1:
        if photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"):
            return None
    elif samples == 3:
        # YBR_FULL is converted to RGB by pydicom when as_rgb; YBR_FULL_422 holds two
        # samples a pixel (PS3.3 §C.7.6.3.1.2): both left to pydicom
        if not (photometric == "RGB" or photometric == "YBR_FULL" and not as_rgb):
            return None
        planar = opts.get("planar_configuration")  # (0028,0006) Planar Configuration
        if planar not in (0, 1) or isinstance(planar, bool):
            return None
    else:
        return None
    dtype = np.dtype(f"{'ui'[signed]}{allocated // 8}")
    return NativeLayout(dtype, rows, columns, samples, int(planar), allocated, stored, index)


def _read_native(path: Path, offset: int, layout: NativeLayout, unmasked: bool = False) -> np.ndarray | None:
    """Frame ``layout.index`` read straight into an array: one read of its bytes.

    The same values as pydicom's native decoder (``mask_unused_bits``), unless
    ``unmasked``. None when the file holds less than the frame (pydicom then says so).
    """
    count = layout.rows * layout.columns * layout.samples
    arr = np.empty(count, dtype=layout.dtype)
    with open_source(path) as fp:
        fp.seek(offset + layout.index * arr.nbytes)
        if fp.readinto(memoryview(arr).cast("B")) != arr.nbytes:
            return None
    if not unmasked:
        mask_unused_bits(arr, layout.bits_stored)
    if layout.samples == 1:
        return arr.reshape(layout.rows, layout.columns)
    if layout.planar == 0:
        return arr.reshape(layout.rows, layout.columns, layout.samples)
    return arr.reshape(layout.samples, layout.rows, layout.columns).transpose(1, 2, 0)  # as pydicom's


def mask_unused_bits(arr: np.ndarray, bits_stored: int) -> np.ndarray:
    """``arr`` (an integer array, changed in place) with only its low ``bits_stored`` bits.

    When (0028,0101) Bits Stored is less than the bits of each sample the unused high
    bits are not part of the value (PS3.5 §8.1.1), so they are cleared (unsigned) or
    filled with the sign bit (signed, 2's complement), as pydicom's
    ``_correct_unused_bits`` does with a shift left and back.
    """
    unused = arr.itemsize * 8 - bits_stored
    if unused > 0:
        if arr.dtype.kind == "u":
            np.bitwise_and(arr, (1 << bits_stored) - 1, out=arr)
        else:
            np.left_shift(arr, unused, out=arr)
            np.right_shift(arr, unused, out=arr)
    return arr


def _precheck(tsyntax: UID, src: object, index: int, opts: dict) -> bytes | None:
    """Refuse, before decoding, a frame over DICOMSVC_MAX_FRAME_BYTES or a compressed frame
    whose header disagrees with the data set (``precheck``). ``src`` is the dataset or the
    file positioned at the pixel data's value. Returns the compressed frame checked (read
    as pydicom's decoder would: ``get_frame``), None for native data."""
    geom = precheck.geometry(opts)
    if geom is not None:  # else a missing or malformed value: the decoder's validation refuses it
        precheck.check_size(geom, _max_frame_bytes)
    if not tsyntax.is_encapsulated:
        return None
    buffer = src.PixelData if isinstance(src, Dataset) else src
    frame = get_frame(
        buffer, index, number_of_frames=opts.get("number_of_frames"), extended_offsets=opts.get("extended_offsets")
    )
    if geom is not None:
        precheck.check_codestream(tsyntax, frame, geom)
    return frame


def _pixel_options(ds: Dataset, **kwargs) -> dict:
    try:
        return as_pixel_options(ds, **kwargs)
    except ValueError:  # e.g. (0028,0008) Number of Frames "1A": read it as dcmtk does
        fixed = shallow_copy(ds)  # the caller's tags keep the original value
        fixed[0x00280008] = DataElement(0x00280008, "IS", frame_count(ds))
        return as_pixel_options(fixed, **kwargs)


def shallow_copy(ds: Dataset) -> Dataset:
    """A new Dataset holding ``ds``'s elements, in which an element can be *replaced*
    (``copy[tag] = DataElement(...)``) without touching ``ds``.

    Not ``Dataset(ds)``: that shares ``ds``'s element dict, so anything set on it
    lands in ``ds`` too. Setting a value (``copy.Keyword = v``) would still change
    the shared element: replace elements instead.
    """
    copy = Dataset({tag: ds.get_item(tag) for tag in ds.keys()})
    if hasattr(ds, "file_meta"):
        copy.file_meta = ds.file_meta
    return copy


def _guess_syntax(ds: Dataset) -> str:
    implicit, little = ds.original_encoding
    if implicit or implicit is None:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _decode_failure(tsyntax: str, exc: Exception) -> str:
    name = getattr(tsyntax, "name", "") or str(tsyntax)
    message = " ".join(str(exc).split())[:300]
    if "MemoryError" in message or "Unable to allocate" in message:  # pydicom wraps a plugin's
        raise WorkerMemory("decoding the frame needed more memory than a worker may use")
    return f"pixel data ({name}) could not be decoded: {type(exc).__name__}: {message}"
