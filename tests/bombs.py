"""Hostile files built from pydicom's bundled ones: a frame whose codestream header, or
whose data set, claims 65535 x 65535 pixels; an RLE frame that panics pylibjpeg-rle."""

import struct
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import RLELossless

from dicomfiles import make_ct, sample_file, save

HUGE = 65535


def _first_frame(ds: Dataset) -> bytearray:
    return bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))


def _with_frame(ds: Dataset, frame: bytes, path: Path) -> Path:
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True  # PS3.5 A.4: encapsulated
    return save(ds, path)


def j2k_siz(path: Path) -> Path:
    """JPEG 2000 whose SIZ marker (ITU T.800 A.5.1) claims 65535 x 65535 (the data set: 64 x 64)."""
    ds = dcmread(sample_file("MR_small_jp2klossless.dcm"))
    frame = _first_frame(ds)
    siz = frame.index(b"\xff\x51")  # Lsiz Rsiz, then Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz
    struct.pack_into(">IIIIII", frame, siz + 6, HUGE, HUGE, 0, 0, HUGE, HUGE)
    return _with_frame(ds, frame, path)


def _sof(name: str, marker: bytes, path: Path) -> Path:
    ds = dcmread(sample_file(name))
    frame = _first_frame(ds)
    sof = frame.index(marker)  # Lf(2) P(1) Y(2) X(2)
    struct.pack_into(">HH", frame, sof + 5, HUGE, HUGE)
    return _with_frame(ds, frame, path)


def jpeg_ls_sof55(path: Path) -> Path:
    """JPEG-LS whose SOF55 (ITU T.87 C.2.2) claims 65535 x 65535 (the data set: 64 x 64)."""
    return _sof("MR_small_jpeg_ls_lossless.dcm", b"\xff\xf7", path)


def jpeg_sof0_agreed(path: Path) -> Path:
    """Baseline JPEG whose SOF0 and data set both claim 65535 x 65535 x 3 (12 GiB decoded)."""
    jpeg_sof0(path)
    ds = dcmread(path)
    ds.Rows = ds.Columns = HUGE
    return save(ds, path)


def jpeg_sof0(path: Path) -> Path:
    """Baseline JPEG whose SOF0 (ITU T.81 B.2.2) claims 65535 x 65535 (the data set: 100 x 100)."""
    return _sof("SC_rgb_jpeg_dcmtk.dcm", b"\xff\xc0", path)


def rle_rows_columns(path: Path) -> Path:
    """RLE Lossless, 8-bit monochrome, whose data set claims 65535 x 65535 (4 GiB decoded)
    for segments that hold 64 x 64."""
    ds = make_ct(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64) % 200)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.compress(RLELossless)
    ds.Rows = ds.Columns = HUGE
    return save(ds, path)


def dataset_claims(name: str, path: Path) -> Path:
    """A bundled file with (0028,0010) Rows and (0028,0011) Columns set to 65535."""
    ds = dcmread(sample_file(name))
    ds.Rows = ds.Columns = HUGE
    return save(ds, path)


def rle_panic(path: Path) -> Path:
    """16-bit RLE, 2 x 2 pixels, whose two segments each decode to 128 bytes, not 4:
    pylibjpeg-rle 2.2 indexes past its frame and panics (pyo3_runtime.PanicException).
    The header itself is sound (2 segments, ascending offsets), so no check refuses it."""
    ds = make_ct(np.zeros((2, 2), np.uint16))
    segment = bytes([0x81, 0x05])  # PS3.5 G.3.1: byte -127 repeats the next byte 128 times
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *[0] * 13)
    ds.file_meta.TransferSyntaxUID = RLELossless
    return _with_frame(ds, header + segment + segment, path)


CODESTREAM_BOMBS = {"j2k": j2k_siz, "jpeg-ls": jpeg_ls_sof55, "jpeg": jpeg_sof0}
