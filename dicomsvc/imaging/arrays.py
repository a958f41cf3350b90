"""Pixel data as a NumPy ``.npy`` file, streamed a frame at a time.

For ML pipelines (``GET /dicom/{id}/pixels``): the array is the stored pixel
values, with the dtype and shape pydicom's ``Dataset.pixel_array`` gives —
``(rows, columns)`` for one grey frame, ``(frames, rows, columns)`` for several,
a trailing ``3`` for colour (YBR_* already converted to RGB, as ``pixel_array``
does by default). ``rescale=True`` applies the modality LUT (Rescale
Slope/Intercept or Modality LUT Sequence, via pydicom's ``apply_modality_lut``)
and gives float32.

The ``.npy`` header is written here (format 1.0, or 2.0 when the header would
not fit 1.0's 16-bit length), following numpy's ``NEP 1`` format description:
magic ``\\x93NUMPY``, version, header length, a Python-literal dict padded with
spaces to a multiple of 64 bytes and ending in ``\\n``; then the data in C order.

Only the first frame is decoded before returning (to learn the dtype and shape,
and to raise decoding errors while the caller can still answer with a status);
the others are decoded as the iterator is consumed, one frame in memory at a
time. The iterator reads ``path`` lazily: consume it in the process that called
``npy_stream``, while the file is still there.

Known limit: as pydicom's ``apply_modality_lut``, only the top-level rescale /
Modality LUT is used, not per-frame functional groups of enhanced multi-frame
objects.
"""

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib.format import dtype_to_descr
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from ..errors import BadRequest, NoPixelData, UnsupportedTransferSyntax
from ..dicom.parse import Parsed, frame_count
from .decode import decode_frame

MAGIC = b"\x93NUMPY"
ALIGN = 64  # numpy aligns the data to 64 bytes (numpy.lib.format.ARRAY_ALIGN)
V1_MAX_HEADER = 0xFFFF  # format 1.0 stores the header length in 16 bits


def npy_stream(
    path: Path, parsed: Parsed, frame: int | None = None, rescale: bool = False
) -> tuple[int, Iterator[bytes]]:
    """The total byte length and the chunks of a ``.npy`` file of the pixel data.

    ``frame`` (1-based) selects one frame; otherwise every frame, in order. The
    chunks are the header, then one chunk per frame.

    Raises NoPixelData (no pixel data), BadRequest (``frame`` out of range) and
    UnsupportedTransferSyntax (pixel data that cannot be decoded).
    """
    if parsed.pixel is None:
        raise NoPixelData("this instance has no pixel data")
    count = frame_count(parsed.ds)
    if frame is None:
        indexes = range(count)
    elif 1 <= frame <= count:
        indexes = range(frame - 1, frame)
    else:
        raise BadRequest(f"frame {frame} is out of range: this instance has {count} frame(s), numbered from 1")
    first = _frame(path, parsed, indexes[0], rescale)
    shape = first.shape if len(indexes) == 1 else (len(indexes), *first.shape)
    header = npy_header(first.dtype, shape)
    total = len(header) + first.nbytes * len(indexes)
    return total, _chunks(path, parsed, indexes, rescale, header, first)


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` preamble for a C-order array: version 1.0, or 2.0 if needed."""
    text = repr({"descr": dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    body = text.encode("latin1")
    for version, size_format in (((1, 0), "<H"), ((2, 0), "<I")):
        prefix = len(MAGIC) + 2 + struct.calcsize(size_format)
        padding = -(prefix + len(body) + 1) % ALIGN
        length = len(body) + padding + 1
        if size_format == "<H" and length > V1_MAX_HEADER:
            continue
        return MAGIC + bytes(version) + struct.pack(size_format, length) + body + b" " * padding + b"\n"
    raise ValueError("npy header too large")  # pragma: no cover - needs a 4 GiB header


def _chunks(
    path: Path, parsed: Parsed, indexes: range, rescale: bool, header: bytes, first: np.ndarray
) -> Iterator[bytes]:
    yield header
    yield first.tobytes()
    for index in indexes[1:]:
        arr = _frame(path, parsed, index, rescale)
        if arr.shape != first.shape or arr.dtype != first.dtype:
            # Cannot happen with one decoder per file; never emit a corrupt .npy silently.
            raise UnsupportedTransferSyntax(f"frame {index + 1} decodes to another shape or type than frame 1")
        yield arr.tobytes()


def _frame(path: Path, parsed: Parsed, index: int, rescale: bool) -> np.ndarray:
    """Frame ``index`` (0-based) as pixel_array has it, or modality-LUT'd as float32."""
    arr = decode_frame(path, parsed, index)
    if rescale:
        # (0028,1052) Rescale Intercept, (0028,1053) Rescale Slope, (0028,3000) Modality LUT Sequence
        arr = apply_modality_lut(arr, parsed.ds).astype(np.float32)
    return arr
