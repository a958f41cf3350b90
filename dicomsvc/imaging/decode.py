"""Decoding one frame of pixel data, reading only what that frame needs.

Every transfer syntax pydicom decodes with the pylibjpeg, openjpeg and RLE plugins.
Before a decoder sees a frame, its decoded size is checked against the limit and a
compressed frame's own header against the data set (``precheck``).
"""

from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..dicom.parse import Parsed, frame_count
from ..errors import DicomSvcError, NoPixelData, UnsupportedTransferSyntax, WorkerMemory
from . import precheck

# DICOMSVC_MAX_FRAME_BYTES for this process: the service sets it in each worker
_max_frame_bytes = precheck.DEFAULT_MAX_FRAME_BYTES


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
            src = open(path, "rb")
            src.seek(pixel.offset)
        try:
            frame = _precheck(tsyntax, src, index, opts)
            if frame is not None and src is not ds:  # decode the bytes checked: read once
                src.close()
                src, index = encapsulate([frame], has_bot=False), 0
                opts = {k: v for k, v in opts.items() if k != "extended_offsets"} | {"number_of_frames": 1}
            arr, _ = decoder.as_array(src, index=index, validate=True, as_rgb=as_rgb, **opts)
        finally:
            if src is not ds and not isinstance(src, bytes):
                src.close()
    except DicomSvcError:
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
