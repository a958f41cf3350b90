"""What decoding a frame will cost, checked before a decoder is handed the data.

A few-KB file can claim a 65535×65535 image, either in its data set or in its
codestream's own header, and drive a decoder to many GB (or, for JPEG-LS,
minutes) before it fails. So, before decoding:

* the frame's decoded size, (0028,0010) Rows x (0028,0011) Columns ×
  (0028,0002) Samples per Pixel x bytes per sample of (0028,0100) Bits Allocated,
  is compared with a limit (DICOMSVC_MAX_FRAME_BYTES; ``FrameTooLarge``);
* the compressed frame's own header must describe the image the data set
  describes (``CodestreamMismatch``): the JPEG SOF segment (ITU T.81 B.2.2), the
  JPEG-LS SOF55 segment (ITU T.87 C.2.2), the JPEG 2000 SIZ marker segment
  (ITU T.800 A.5.1; PS3.5 A.4.4), the RLE header (PS3.5 G.3.1, G.5).

Pure functions over a data set's values and a frame's bytes.
"""

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.uid import (
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from ..errors import CodestreamMismatch, FrameTooLarge

DEFAULT_MAX_FRAME_BYTES = 512 * 1024**2

# ITU T.81 Table B.1: SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC)
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_LS_SOF = frozenset({0xF7})  # ITU T.87 Table C.1: SOF55
# Markers without a length field (ITU T.81 B.1.1.3): TEM, RSTm, SOI, EOI
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
JPEG_SOS = 0xDA
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # ITU T.800 A.4.1: SIZ is the first marker after SOC
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # ITU T.800 I.5.1: the JP2 signature box
RLE_EXPANSION = 64  # PS3.5 G.3.1: at most 128 bytes out of a 2-byte replicate run


@dataclass(frozen=True)
class Geometry:
    """One frame as the data set describes it."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int

    @property
    def bytes_per_sample(self) -> int:
        """Decoded bytes per sample (1-bit data is unpacked to one byte per pixel)."""
        return max(1, math.ceil(self.bits_allocated / 8))

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples * self.bytes_per_sample


def geometry(opts: dict[str, Any]) -> Geometry | None:
    """The frame geometry from pydicom pixel options, or None when a value is missing or
    not a number (the decoder's own validation refuses those, before allocating)."""
    try:
        values = [int(opts[k]) for k in ("rows", "columns", "samples_per_pixel", "bits_allocated")]
    except (KeyError, TypeError, ValueError):
        return None
    if min(values) < 0:
        return None
    return Geometry(*values)


def check_size(geom: Geometry, max_bytes: int) -> None:
    """Refuse a frame whose decoded size is over ``max_bytes`` (DICOMSVC_MAX_FRAME_BYTES)."""
    if geom.frame_bytes > max_bytes:
        raise FrameTooLarge(
            f"a frame of {geom.rows} rows x {geom.columns} columns x {geom.samples} samples x "
            f"{geom.bytes_per_sample} bytes is {geom.frame_bytes} bytes decoded, over the limit of "
            f"{max_bytes} bytes (DICOMSVC_MAX_FRAME_BYTES)"
        )


def check_codestream(transfer_syntax: str, frame: bytes, geom: Geometry) -> None:
    """Refuse a compressed frame whose own header describes another image than ``geom``."""
    if transfer_syntax in JPEGTransferSyntaxes:
        _check_jpeg(frame, geom, JPEG_SOF, "JPEG SOF (ITU T.81 B.2.2)")
    elif transfer_syntax in JPEGLSTransferSyntaxes:
        _check_jpeg(frame, geom, JPEG_LS_SOF, "JPEG-LS SOF55 (ITU T.87 C.2.2)")
    elif transfer_syntax in JPEG2000TransferSyntaxes:
        _check_j2k(frame, geom)
    elif transfer_syntax == RLELossless:
        _check_rle(frame, geom)


def _mismatch(what: str, claims: str, geom: Geometry) -> CodestreamMismatch:
    return CodestreamMismatch(
        f"the {what} header describes {claims}, the data set {geom.rows} rows x {geom.columns} "
        f"columns x {geom.samples} samples of {geom.bits_allocated} bits allocated"
    )


def _compare(what: str, geom: Geometry, rows: int, columns: int, samples: int, bits: int) -> None:
    """Dimensions and samples must be equal; the precision at most Bits Allocated."""
    if (rows, columns, samples) != (geom.rows, geom.columns, geom.samples) or not 1 <= bits <= geom.bits_allocated:
        claims = f"{rows} rows x {columns} columns x {samples} samples of {bits} bits"
        raise _mismatch(what, claims, geom)


def _check_jpeg(frame: bytes, geom: Geometry, sof_markers: frozenset[int], what: str) -> None:
    """Walk the marker segments from SOI to the first SOF (ITU T.81 B.1.1, B.2.2; T.87 C.2.2):
    SOF is Lf(2) P(1) Y(2) X(2) Nf(1). Y = 0 (lines given later by DNL, or by an LSE
    segment in JPEG-LS) is refused: the size could not be checked before decoding."""
    if frame[:2] != b"\xff\xd8":
        raise CodestreamMismatch(f"the frame does not start with a JPEG SOI marker ({what})")
    try:
        for marker, pos, length in jpeg_segments(frame):
            if marker in sof_markers:
                if length < 8 or pos + 8 > len(frame):
                    break
                bits, rows, columns, samples = struct.unpack_from(">BHHB", frame, pos + 2)
                _compare(what, geom, rows, columns, samples, bits)
                return
    except ValueError:
        raise CodestreamMismatch(f"the JPEG marker segments are malformed before the {what} header") from None
    raise CodestreamMismatch(f"the frame has no {what} header before its scan data")


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """The marker segments of a JPEG (or JPEG-LS) stream after its SOI, up to its first scan
    (ITU T.81 B.1.1): (marker, offset of the segment's length field, that length). Ends at SOS,
    at the end of the data or at a length under 2; ValueError where a marker must begin and
    none does."""
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise ValueError("not a marker")
        while pos < end and data[pos] == 0xFF:  # fill bytes (ITU T.81 B.1.1.2)
            pos += 1
        if pos >= end:
            return
        marker = data[pos]
        pos += 1
        if marker in STANDALONE:
            continue
        if marker == JPEG_SOS or pos + 2 > end:
            return
        (length,) = struct.unpack_from(">H", data, pos)
        yield marker, pos, length
        if length < 2:
            return
        pos += length


def _check_j2k(frame: bytes, geom: Geometry) -> None:
    """SIZ (ITU T.800 A.5.1): Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz,
    then Ssiz XRsiz YRsiz per component; the image is (Xsiz - XOsiz) x (Ysiz - YOsiz)
    (B.2), a component's depth (Ssiz & 0x7F) + 1 bits. A JP2 file's codestream is in
    its ``jp2c`` box (I.5.4)."""
    what = "JPEG 2000 SIZ (ITU T.800 A.5.1)"
    start = _j2k_codestream_start(frame)
    if start is None or frame[start : start + 4] != J2K_SOC_SIZ or len(frame) < start + 4 + 38:
        raise CodestreamMismatch(f"the frame does not start with a {what} header")
    siz = start + 4
    length, _, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, _, _, csiz = struct.unpack_from(">HHIIIIIIIIH", frame, siz)
    if length != 38 + 3 * csiz or len(frame) < siz + length or not xtsiz or not ytsiz or xosiz >= xsiz or yosiz >= ysiz:
        raise CodestreamMismatch(f"the frame's {what} header is malformed")
    depths = [(frame[siz + 38 + 3 * i] & 0x7F) + 1 for i in range(csiz)]
    _compare(what, geom, ysiz - yosiz, xsiz - xosiz, csiz, max(depths, default=0))


def _j2k_codestream_start(frame: bytes) -> int | None:
    if not frame.startswith(JP2_SIGNATURE):
        return 0
    pos = 0
    while pos + 8 <= len(frame):  # boxes: LBox(4) TBox(4) [XLBox(8)] (ITU T.800 I.4)
        size, kind = struct.unpack_from(">I4s", frame, pos)
        header = 8
        if size == 1:
            if pos + 16 > len(frame):
                return None
            (size,) = struct.unpack_from(">Q", frame, pos + 8)
            header = 16
        if kind == b"jp2c":
            return pos + header
        if size == 0 or size < header:  # size 0: the box runs to the end, and it is not jp2c
            return None
        pos += size
    return None


def _check_rle(frame: bytes, geom: Geometry) -> None:
    """The RLE header (PS3.5 G.5): the number of segments, then 15 offsets, the first 64.
    Each sample's bytes are one segment (G.2), so there are Samples per Pixel x bytes
    per sample of them; the offsets ascend within the frame; and a segment of n bytes
    decodes to at most 64·n bytes (G.3.1), so one too short for Rows x Columns cannot
    be the image the data set describes."""
    what = "RLE (PS3.5 G.5)"
    if len(frame) < 64:
        raise CodestreamMismatch(f"the frame is shorter than an {what} header")
    count, *offsets = struct.unpack_from("<16I", frame)
    expected = geom.samples * geom.bytes_per_sample
    if count != expected:
        raise _mismatch(what, f"{count} segments", geom) from None
    ends = offsets[:count] + [len(frame)]
    if count < 1 or offsets[0] != 64 or any(b <= a for a, b in zip(ends, ends[1:])):
        raise CodestreamMismatch(f"the frame's {what} header has invalid segment offsets")
    pixels = geom.rows * geom.columns
    if geom.bits_allocated == 1:  # at least 8 pixels a byte, whichever way a decoder packs them
        pixels = math.ceil(pixels / 8)
    if any((b - a) * RLE_EXPANSION < pixels for a, b in zip(ends, ends[1:])):
        raise _mismatch(what, "segments too short to decode to that many pixels", geom)
