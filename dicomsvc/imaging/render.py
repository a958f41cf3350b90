"""Decoding one frame and turning it into display pixels, in the standard's order.

Greyscale: modality LUT → VOI LUT or window (or the frame's min–max) →
MONOCHROME1 inversion → 8 bits. Colour (RGB, YBR_*, PALETTE COLOR) → 8-bit RGB.
The reference for "right" is dcmtk's ``dcmj2pnm`` on the same file.

For integer data the whole greyscale chain is computed once per distinct input
value (a lookup table over the frame's range) and then indexed, which is both
exact and much cheaper than transforming every pixel in floating point.

Colour follows dcmtk's arithmetic too: YBR_FULL / YBR_FULL_422 that reaches
dcmtk's image layer as YBR (native, deflated and RLE data) is converted as its
dcmimage does (``display_frame``); JPEG colour keeps the decoder's conversion,
which is IJG's arithmetic, the one dcmtk's JPEG decoder uses. Palette LUT Data of
big-endian files is read in the file's byte order (``_palette``).
"""

import functools
import re
from collections import Counter
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.pixels.processing import apply_voi
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from ..dicom.parse import Parsed
from ..errors import UnsupportedTransferSyntax
from .decode import decode_frame, decode_frame_unmasked, mask_unused_bits, shallow_copy
from .png import encode_png

# 8- and 16-bit frames go through a lookup table indexed by their raw bits
SMALL_INTS = {np.dtype(t): np.dtype("u" + t[1:]) for t in ("i1", "u1", "i2", "u2")}
# Indices per np.take in ``_lookup`` (measured on 512x512 int16 frames: 2^16 was faster
# than 2^14 and than one take over the frame)
LOOKUP_CHUNK = 1 << 16
# False computes the grey chain on every pixel (the tests compare the two: same bytes)
USE_LUT = True
# Grey frames shown by each path in this process: "window table" (the cached table of a
# plain rescale + window), "table" (the chain over every value of the type, then looked
# up), "per pixel" (the chain on every pixel: float, 32-bit or 1-bit data)
PATHS: Counter = Counter()

# Where dcmtk's dcmimage, not a JPEG decoder, turns YBR into RGB
YBR_BY_DCMIMAGE = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
}

# (0028,1201-1204) Red, Green, Blue, Alpha Palette Color Lookup Table Data
PALETTE_DATA_TAGS = (0x00281201, 0x00281202, 0x00281203, 0x00281204)
# A DS value (PS3.5 Table 6.2-1) as pydicom checks it: a decimal number, spaces around, 16 bytes at most
DECIMAL_RE = re.compile(rb" *[+\-]?(\d+|\d+\.\d*|\.\d+)([eE][+\-]?\d+)? *")
DECIMAL_MAX = 16
# (0028,1050) Window Center, (0028,1051) Window Width, (0028,1052) Rescale Intercept, (0028,1053) Rescale Slope
WINDOW_CENTER, WINDOW_WIDTH, RESCALE_INTERCEPT, RESCALE_SLOPE = 0x00281050, 0x00281051, 0x00281052, 0x00281053


def render_png(path: Path, parsed: Parsed, index: int = 0) -> bytes:
    """PNG bytes of frame ``index`` (0-based) of the file at ``path``."""
    frame, stored_bits = _display_frame(path, parsed, index, unmasked=True)
    return encode_png(to_display(frame, parsed.ds, stored_bits=stored_bits))


def display_frame(path: Path, parsed: Parsed, index: int = 0) -> np.ndarray:
    """Frame ``index`` decoded for ``to_display``: as ``decode_frame``, except that
    native/RLE YBR_FULL and YBR_FULL_422 are converted to RGB with dcmtk's arithmetic
    (``ybr_to_rgb``) instead of pydicom's (which rounds, where dcmtk truncates)."""
    return _display_frame(path, parsed, index, unmasked=False)[0]


def _display_frame(path: Path, parsed: Parsed, index: int, unmasked: bool) -> tuple[np.ndarray, int | None]:
    """``display_frame``, and with ``unmasked`` the frame's bits above Bits Stored possibly
    left for ``to_display(stored_bits=)`` to clear (``decode.decode_frame_unmasked``)."""
    ds = parsed.ds
    if parsed.transfer_syntax in YBR_BY_DCMIMAGE and _ybr_kind(ds) is not None:
        return ybr_to_rgb(decode_frame(path, parsed, index, as_rgb=False), ds), None
    if unmasked:
        return decode_frame_unmasked(path, parsed, index)
    return decode_frame(path, parsed, index), None


def _ybr_kind(ds: Dataset) -> str | None:
    """"YBR_FULL" or "YBR_FULL_422" for unsigned 3-sample data we convert ourselves."""
    # (0028,0004) Photometric Interpretation, (0028,0002) Samples per Pixel,
    # (0028,0103) Pixel Representation
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("YBR_FULL", "YBR_FULL_422"):
        return None
    try:
        samples, signed = int(ds.get("SamplesPerPixel", 3)), int(ds.get("PixelRepresentation", 0) or 0)
    except (TypeError, ValueError):
        return None
    return photometric if samples == 3 and not signed else None  # signed: pydicom's, as before


def ybr_to_rgb(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """YBR_FULL (or upsampled YBR_FULL_422) samples to RGB exactly as dcmtk 3.6.7.

    PS3.3 C.7.6.3.1.2 gives the equations; dcmtk's dcmimage evaluates them as
    follows (``DiYBRPixelTemplate::convert``, ``DiYBRPart422PixelTemplate::convert``),
    with ``max`` = 2^BitsStored - 1:

    * YBR_FULL, 8 bits stored: four tables of C-truncated terms,
      ``R = Y + (int)(1.402 Cr - 0.701 max)``,
      ``G = Y - (int)(0.3441 Cb) - (int)(0.7141 Cr - 0.5291 max)``,
      ``B = Y + (int)(1.772 Cb - 0.8859 max)``, each clamped to 0..max;
    * otherwise (YBR_FULL_422, or other depths): the same equations in double,
      clamped to 0..max, then truncated.

    Stored values are masked to Bits Stored first, as dcmtk reads them.
    Returns uint8 (up to 8 bits stored) or uint16 RGB.
    """
    bits = int(ds.get("BitsStored", 8) or 8)  # (0028,0101) Bits Stored
    top = (1 << bits) - 1
    values = frame.astype(np.int64) & top
    y, cb, cr = values[..., 0], values[..., 1], values[..., 2]
    if _ybr_kind(ds) == "YBR_FULL" and bits == 8:
        table = np.arange(256, dtype=np.float64)
        rcr = np.trunc(1.402 * table - 0.701 * 255.0).astype(np.int64)
        gcb = np.trunc(0.3441 * table).astype(np.int64)
        gcr = np.trunc(0.7141 * table - 0.5291 * 255.0).astype(np.int64)
        bcb = np.trunc(1.772 * table - 0.8859 * 255.0).astype(np.int64)
        rgb = np.stack([y + rcr[cr], y - gcb[cb] - gcr[cr], y + bcb[cb]], axis=-1)
        return np.clip(rgb, 0, top).astype(np.uint8)
    y, cb, cr = (v.astype(np.float64) for v in (y, cb, cr))
    rgb = np.stack(
        [
            y + 1.402 * cr - 0.701 * top,
            y - 0.3441 * cb - 0.7141 * cr + 0.5291 * top,
            y + 1.772 * cb - 0.8859 * top,
        ],
        axis=-1,
    )
    return np.trunc(np.clip(rgb, 0.0, float(top))).astype(np.uint8 if bits <= 8 else np.uint16)


def to_display(
    frame: np.ndarray, ds: Dataset, window: tuple[float, float] | None = None, *, stored_bits: int | None = None
) -> np.ndarray:
    """8-bit display pixels: (rows, columns) grey or (rows, columns, 3) RGB.

    ``window`` (center, width), when given, replaces the file's own VOI (Window
    Center/Width, VOI LUT Sequence or min–max) for grey images, after the modality
    LUT and before MONOCHROME1 inversion, keeping the file's VOI LUT Function, as
    ``dcmj2pnm --set-window C W`` does. A width below 1 (0 for SIGMOID/LINEAR_EXACT)
    is unusable and falls back to the min–max window. Colour images ignore it.

    ``stored_bits``, when given, says that ``frame`` still holds the bits above (0028,0101)
    Bits Stored as the file has them (``decode.decode_frame_unmasked``): only its low
    ``stored_bits`` bits are the value (PS3.5 §8.1.1). A grey 8- or 16-bit frame's lookup
    table then clears or sign-extends them for each raw value; other frames are masked
    first (``decode.mask_unused_bits``, in place). The output is the same either way.
    """
    # (0028,0004) Photometric Interpretation
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    grey_table = photometric != "PALETTE COLOR" and frame.ndim != 3 and frame.dtype in SMALL_INTS and USE_LUT
    if stored_bits is not None and not grey_table:
        frame, stored_bits = mask_unused_bits(frame, stored_bits), None
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(frame, _palette(ds))
        except (ValueError, TypeError, IndexError, KeyError):
            # No Palette Color Lookup Table Descriptors/Data (0028,1101-1103/1201-1203), or ones
            # that do not describe a table (PS3.3 C.7.6.3.1.5-6): nothing to show.
            raise UnsupportedTransferSyntax(
                "PALETTE COLOR pixel data without usable Palette Color Lookup Tables"
            ) from None
        return _to_uint8(rgb, _lut_bits(ds))
    if frame.ndim == 3:  # RGB, or YBR_* already converted to RGB by the decoder
        # (0028,0101) Bits Stored
        return _to_uint8(frame, int(ds.get("BitsStored", 8) or 8))
    return _grey(frame, ds, invert=photometric == "MONOCHROME1", window=window, stored_bits=stored_bits)


def _grey(
    frame: np.ndarray, ds: Dataset, invert: bool, window: tuple[float, float] | None = None, stored_bits: int | None = None
) -> np.ndarray:
    if frame.dtype in SMALL_INTS and USE_LUT:
        # One table over every value the type can hold, indexed by the raw bits: the
        # chain runs on 256 or 65536 values instead of every pixel. With a plain
        # rescale and window the table depends on a handful of numbers, shared by a
        # whole series, so it is cached.
        unsigned = frame.view(SMALL_INTS[frame.dtype])
        plain = _plain_window(ds, window)
        if plain is not None:
            PATHS["window table"] += 1
            return _lookup(_window_table(frame.dtype.str, invert, *plain, stored_bits), unsigned)
        domain = _domain(frame.dtype.str, stored_bits)
        present = lambda: np.bincount(unsigned.ravel(), minlength=domain.size) > 0  # noqa: E731
        PATHS["table"] += 1
        return _lookup(_grey_chain(domain, ds, invert, present, window), unsigned)
    if frame.dtype == np.bool_:
        frame = frame.astype(np.uint8)
    PATHS["per pixel"] += 1
    return _grey_chain(frame, ds, invert, None, window)


def _lookup(table: np.ndarray, unsigned: np.ndarray) -> np.ndarray:
    """``table[unsigned]``: the same values, in about a third of the time of fancy indexing.

    ``np.take`` in slices of LOOKUP_CHUNK indices, each written straight into the result:
    take converts its indices to intp first, and a slice's conversion stays in the CPU
    cache where a whole frame's (2 MB for 512x512) does not. Every 8- or 16-bit index is
    within the table of 2^8 or 2^16 entries, so ``mode="clip"`` never clips; it spares
    the bounds check and the buffered copy ``out=`` has with the default mode. An 8-bit
    frame with a table of bytes goes through ``bytearray.translate`` (about 2.5x faster).
    """
    assert table.size == 1 << (8 * unsigned.itemsize)
    if unsigned.itemsize == 1 and table.dtype == np.uint8:
        # a bytearray's translate is a new bytearray: a writable array, like take's
        translated = bytearray(np.ascontiguousarray(unsigned).data).translate(table.tobytes())
        return np.frombuffer(translated, np.uint8).reshape(unsigned.shape)
    flat = unsigned.reshape(-1)
    out = np.empty(flat.size, table.dtype)
    for start in range(0, flat.size, LOOKUP_CHUNK):
        stop = start + LOOKUP_CHUNK
        np.take(table, flat[start:stop], out=out[start:stop], mode="clip")
    return out.reshape(unsigned.shape)


def _domain(dtype: str, stored_bits: int | None = None) -> np.ndarray:
    """Every value of an 8- or 16-bit integer type, in the order of its raw bits; with
    ``stored_bits``, the value each raw bit pattern holds in its low ``stored_bits`` bits."""
    kind = np.dtype(dtype)
    domain = np.arange(1 << (8 * kind.itemsize), dtype=SMALL_INTS[kind]).view(kind)
    return domain if stored_bits is None else mask_unused_bits(domain, stored_bits)


def _plain_window(ds: Dataset, window: tuple[float, float] | None = None) -> tuple[float, float, float, float, str] | None:
    """(slope, intercept, center, width, function) when nothing but those shapes the output.

    Each element is read once (this runs for every ingested instance, on a data set whose
    values pydicom has not converted yet): the same values ``_window_params`` reads.
    """
    if 0x00283000 in ds:  # (0028,3000) Modality LUT Sequence
        return None
    try:
        if window is None:
            # (0028,1050) Window Center, (0028,1051) Window Width: the first pair
            center, width = _first_decimal(ds, WINDOW_CENTER), _first_decimal(ds, WINDOW_WIDTH)
            if center is None:
                center = ds.get("WindowCenter")
                center = None if center is None else _first(center)
            if width is None:
                width = ds.get("WindowWidth")
                width = None if width is None else _first(width)
            if center is None or width is None:
                return None
            params = center, width, _voi_function(ds)
        else:
            params = _override_params(ds, window)
        slope = _single_decimal(ds, RESCALE_SLOPE)
        slope = float((ds.get("RescaleSlope", 1) if slope is None else slope) or 1)
        intercept = _single_decimal(ds, RESCALE_INTERCEPT)
        intercept = float((ds.get("RescaleIntercept", 0) if intercept is None else intercept) or 0)
    except (TypeError, ValueError, IndexError):
        return None
    if not _usable(params[1], params[2]):
        return None  # an unusable window: the min–max of the frame decides
    return (slope, intercept, *params)


def _first_decimal(ds: Dataset, tag: int) -> float | None:
    """The first value of a DS element (Window Center, Width) as the float pydicom's value
    gives, read from its bytes while pydicom still holds it raw: converting it to DSfloat
    costs ~40 µs, and every ingest reads four of them. None when pydicom is to convert it:
    absent, not an Explicit VR DS held raw, or a first value not in the DS form."""
    raw = ds.get_item(tag, keep_deferred=True)
    if type(raw) is not RawDataElement or raw.VR != "DS" or type(raw.value) is not bytes:
        return None
    value = raw.value.split(b"\\", 1)[0]
    if len(value) > DECIMAL_MAX or not DECIMAL_RE.fullmatch(value):
        return None
    return float(value)


def _single_decimal(ds: Dataset, tag: int) -> float | None:
    """``_first_decimal`` of a DS element holding one value (Rescale Slope, Intercept): None
    for several (pydicom's MultiValue then decides, as float() of it fails)."""
    raw = ds.get_item(tag, keep_deferred=True)
    if type(raw) is RawDataElement and type(raw.value) is bytes and b"\\" in raw.value:
        return None
    return _first_decimal(ds, tag)


def _usable(width: float, function: str) -> bool:
    """Whether ``_window_values`` applies a window of this width and VOI LUT Function
    (else it returns None): SIGMOID and LINEAR_EXACT need a width above 0, LINEAR at least
    1 (PS3.3 C.11.2.1.2-3)."""
    if function in ("SIGMOID", "LINEAR_EXACT") and width > 0:
        return True
    return not width < 1  # NaN passes, as in _window_values


@functools.lru_cache(maxsize=32)
def _window_table(
    dtype: str, invert: bool, slope: float, intercept: float, center, width, function, stored_bits=None
) -> np.ndarray:
    # (0028,1053) Rescale Slope, (0028,1052) Rescale Intercept: as apply_modality_lut does
    values = _domain(dtype, stored_bits).astype(np.float64) * slope + intercept
    table = _to_grey8(_window_values(values, center, width, function), invert)
    table.flags.writeable = False
    return table


def _grey_chain(values: np.ndarray, ds: Dataset, invert: bool, present, window=None) -> np.ndarray:
    """Modality LUT → VOI → inversion for an array of stored values.

    ``present``, when given, says which of ``values`` occur in the frame (a callable,
    as only the min–max window needs it).
    """
    # (0028,1052) Rescale Intercept, (0028,1053) Rescale Slope, (0028,3000) Modality LUT Sequence
    modality = apply_modality_lut(values, ds)
    if window is not None:  # asked for: replaces the file's VOI
        out = _window_values(modality, *_override_params(ds, window))
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        out = _window(modality, ds)
    elif ds.get("VOILUTSequence"):
        out = _voi_lut(modality, ds)
    else:
        out = None
    if out is None:  # neither, or an unusable window: the frame's own min–max
        seen = modality if present is None else modality[present()]
        out = _linear(modality, *_minmax_window(seen))
    return _to_grey8(out, invert)


def _to_grey8(out: np.ndarray, invert: bool) -> np.ndarray:
    out = np.clip(out, 0.0, 255.0)
    if invert:  # MONOCHROME1: minimum is white
        out = 255.0 - out
    # Truncate to 8 bits, as dcmtk does (it then matches dcmj2pnm exactly on lossless data).
    return np.floor(out).astype(np.uint8)


def _first(value) -> float:
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, str):
        value = value[0]
    return float(value)


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    try:
        params = _window_params(ds)
    except (TypeError, ValueError, IndexError):
        return None
    return _window_values(values, *params)


def _window_params(ds: Dataset) -> tuple[float, float, str]:
    # (0028,1050) Window Center, (0028,1051) Window Width: the first pair
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    return center, width, _voi_function(ds)


def _override_params(ds: Dataset, window: tuple[float, float]) -> tuple[float, float, str]:
    """A window given by the caller, with the file's VOI LUT Function (as dcmj2pnm --set-window)."""
    center, width = window
    return float(center), float(width), _voi_function(ds)


def _voi_function(ds: Dataset) -> str:
    # (0028,1056) VOI LUT Function
    return str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()


def _window_values(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """The window applied to ``values`` (0..255), or None when the window is unusable."""
    if function == "SIGMOID" and width > 0:
        with np.errstate(over="ignore"):  # a narrow window saturates exp(): 0 or 255, as meant
            return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((values - center) / width + 0.5, 0.0, 1.0) * 255.0
    if width < 1:
        return None
    return _linear(values, center, width)


def _linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, output range 0..255.

    ``((x - (c - 0.5)) / (w - 1) + 0.5) * 255``, computed as dcmtk does (an offset
    plus a gradient, in that order) so the truncated result matches it bit for bit.
    """
    if width <= 1:
        return np.where(values > center - 0.5, 255.0, 0.0)
    gradient = 255.0 / (width - 1)
    offset = 255.0 - ((center - 0.5) / (width - 1) + 0.5) * 255.0
    return np.clip(offset + values * gradient, 0.0, 255.0)


def _minmax_window(values: np.ndarray) -> tuple[float, float]:
    """dcmtk's min-max window: min maps to 0, max to 255 (a constant frame to 0)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return (lo + hi + 1.0) / 2.0, hi - lo + 1.0


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    # (0028,3010) VOI LUT Sequence: the first LUT; (0028,3002) LUT Descriptor gives its depth
    try:
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    except Exception:
        return None
    return mapped.astype(np.float64) * (256.0 / (1 << bits))  # L >> (bits - 8), as dcmtk


def _palette(ds: Dataset) -> Dataset:
    """``ds`` with its palette LUT Data as little-endian words, for ``apply_color_lut``.

    PS3.3 C.7.6.3.1.6: Palette Color Lookup Table Data (0028,1201-1203) is OW,
    words in the data set's byte order. C.7.6.3.1.5: the Descriptor's third value
    says 8 or 16 bits per entry, the data being stored as with 8 or 16 bits
    allocated; 8-bit entries in OW words come two to a word, the first in the
    low-order byte (as dcmtk's DiLookupTable unpacks them). pydicom 3.0's
    apply_color_lut reads the OW bytes as little endian whatever the file's
    transfer syntax, so a big-endian file's 16-bit entries come out byte-swapped
    and its 8-bit entries exchanged pairwise; swapping each word fixes both. The
    Descriptors (0028,1101-1103), US or SS, are numbers pydicom already decoded in
    the file's byte order, and it reads segmented LUTs in that order too.
    """
    if _little_endian(ds):
        return ds
    swapped = {}
    for tag in PALETTE_DATA_TAGS:
        elem = ds.get(tag)
        if elem is not None and isinstance(elem.value, bytes) and len(elem.value) % 2 == 0:
            words = np.frombuffer(elem.value, dtype=">u2").astype("<u2")
            swapped[tag] = DataElement(tag, elem.VR, words.tobytes())
    if not swapped:
        return ds
    fixed = shallow_copy(ds)  # replaced elements below; ds keeps its own
    for tag, elem in swapped.items():
        fixed[tag] = elem
    return fixed


def _little_endian(ds: Dataset) -> bool:
    """The byte order the data set's values were read in (little endian when unknown)."""
    little = ds.original_encoding[1]
    if little is None:
        meta = getattr(ds, "file_meta", None)
        return meta is None or meta.get("TransferSyntaxUID") != ExplicitVRBigEndian
    return bool(little)


def _lut_bits(ds: Dataset) -> int:
    # (0028,1101) Red Palette Color LUT Descriptor: third value is bits per entry
    try:
        return 16 if int(ds.RedPaletteColorLookupTableDescriptor[2]) > 8 else 8
    except Exception:
        return 8


def _to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Colour samples to 8 bits: the top 8 of ``bits`` (dcmtk's ``v >> (bits - 8)``)."""
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":  # float colour data: scale its own range
        top = float(arr.max()) if arr.size else 0.0
        scaled = np.clip(arr, 0, None) * (255.0 / top) if top > 0 else np.zeros_like(arr)
        return np.ascontiguousarray(np.floor(scaled).astype(np.uint8))
    shift = max(bits, 8) - 8
    return np.ascontiguousarray(np.clip(arr >> shift if shift else arr, 0, 255).astype(np.uint8))
