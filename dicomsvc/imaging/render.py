"""Decoding one frame and turning it into display pixels, in the standard's order.

Greyscale: modality LUT → VOI LUT or window (or the frame's min–max) →
MONOCHROME1 inversion → 8 bits. Colour (RGB, YBR_*, PALETTE COLOR) → 8-bit RGB.
The reference for "right" is dcmtk's ``dcmj2pnm`` on the same file.

For integer data the whole greyscale chain is computed once per distinct input
value (a lookup table over the frame's range) and then indexed, which is both
exact and much cheaper than transforming every pixel in floating point.
"""

import functools
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.pixels.processing import apply_voi

from ..dicom.parse import Parsed
from .decode import decode_frame
from .png import encode_png

# 8- and 16-bit frames go through a lookup table indexed by their raw bits
SMALL_INTS = {np.dtype(t): np.dtype("u" + t[1:]) for t in ("i1", "u1", "i2", "u2")}


def render_png(path: Path, parsed: Parsed, index: int = 0) -> bytes:
    """PNG bytes of frame ``index`` (0-based) of the file at ``path``."""
    return encode_png(to_display(decode_frame(path, parsed, index), parsed.ds))


def to_display(frame: np.ndarray, ds: Dataset, window: tuple[float, float] | None = None) -> np.ndarray:
    """8-bit display pixels: (rows, columns) grey or (rows, columns, 3) RGB.

    ``window`` (center, width), when given, replaces the file's own VOI (Window
    Center/Width, VOI LUT Sequence or min–max) for grey images, after the modality
    LUT and before MONOCHROME1 inversion, keeping the file's VOI LUT Function, as
    ``dcmj2pnm --set-window C W`` does. A width below 1 (0 for SIGMOID/LINEAR_EXACT)
    is unusable and falls back to the min–max window. Colour images ignore it.
    """
    # (0028,0004) Photometric Interpretation
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return _to_uint8(apply_color_lut(frame, ds), _lut_bits(ds))
    if frame.ndim == 3:  # RGB, or YBR_* already converted to RGB by the decoder
        # (0028,0101) Bits Stored
        return _to_uint8(frame, int(ds.get("BitsStored", 8) or 8))
    return _grey(frame, ds, invert=photometric == "MONOCHROME1", window=window)


def _grey(frame: np.ndarray, ds: Dataset, invert: bool, window: tuple[float, float] | None = None) -> np.ndarray:
    if frame.dtype in SMALL_INTS:
        # One table over every value the type can hold, indexed by the raw bits: the
        # chain runs on 256 or 65536 values instead of every pixel. With a plain
        # rescale and window the table depends on a handful of numbers, shared by a
        # whole series, so it is cached.
        unsigned = frame.view(SMALL_INTS[frame.dtype])
        plain = _plain_window(ds, window)
        if plain is not None:
            return _window_table(frame.dtype.str, invert, *plain)[unsigned]
        domain = _domain(frame.dtype.str)
        present = lambda: np.bincount(unsigned.ravel(), minlength=domain.size) > 0  # noqa: E731
        return _grey_chain(domain, ds, invert, present, window)[unsigned]
    if frame.dtype == np.bool_:
        frame = frame.astype(np.uint8)
    return _grey_chain(frame, ds, invert, None, window)


def _domain(dtype: str) -> np.ndarray:
    """Every value of an 8- or 16-bit integer type, in the order of its raw bits."""
    kind = np.dtype(dtype)
    return np.arange(1 << (8 * kind.itemsize), dtype=SMALL_INTS[kind]).view(kind)


def _plain_window(ds: Dataset, window: tuple[float, float] | None = None) -> tuple[float, float, float, float, str] | None:
    """(slope, intercept, center, width, function) when nothing but those shapes the output."""
    if "ModalityLUTSequence" in ds:
        return None
    if window is None and (ds.get("WindowCenter") is None or ds.get("WindowWidth") is None):
        return None
    try:
        params = _window_params(ds) if window is None else _override_params(ds, window)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError, IndexError):
        return None
    if params is None or _window_values(np.zeros(1), *params) is None:
        return None  # an unusable window: the min–max of the frame decides
    return (slope, intercept, *params)


@functools.lru_cache(maxsize=32)
def _window_table(dtype: str, invert: bool, slope: float, intercept: float, center, width, function) -> np.ndarray:
    # (0028,1053) Rescale Slope, (0028,1052) Rescale Intercept: as apply_modality_lut does
    values = _domain(dtype).astype(np.float64) * slope + intercept
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
