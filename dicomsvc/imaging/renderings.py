"""On-demand renderings: ``GET /image?id=...&frame=N&window=C,W&width=..&height=..&format=png|jpeg&quality=..``.

Plain synchronous functions (they run in a worker process): the route, the
cache and the stored default rendering are the caller's.

* ``parse_params(query, accept, max_size)`` validates the query into a
  ``RenderParams`` (``BadRequest`` with a clear message otherwise);
* ``is_default(params)`` says whether that is exactly the PNG rendered at
  ingest (frame 1, the file's own VOI, full size, PNG);
* ``cache_key(params)`` is a normalized, filesystem-safe name of the rendering,
  equal for equivalent requests;
* ``render(path, parsed, params)`` decodes only the asked frame and returns the
  encoded image; ``from_display(png, params)`` makes it from the PNG stored at ingest
  instead, when that holds the same display pixels (frame 1, the file's VOI).

Parameters
----------
``frame``
    1-based frame number, default 1. Only that frame is decoded. Beyond the
    instance's Number of Frames: 400, with the count in the message.
``window=C,W`` or ``windowCenter=C&windowWidth=W``
    A VOI window replacing the file's own (Window Center/Width, VOI LUT
    Sequence or min–max): modality LUT first, then this window (with the file's
    VOI LUT Function, as ``dcmj2pnm --set-window C W``), then MONOCHROME1
    inversion. Finite numbers; width at least 1. Colour images ignore it.
``width``, ``height``
    Positive integers: the image is scaled (down or up) to fit inside this box
    keeping its aspect ratio, never stretched nor cropped.
    **Size policy** (``max_size``, the largest output dimension): a dimension
    asked above ``max_size`` is *clamped* to it, not refused (a viewer asking for
    its screen size still gets the largest image we make, and every request
    above the limit shares one cache entry); a dimension not asked is
    ``max_size`` (``width=256`` alone means the box 256 x max_size). So
    ``RenderParams`` carries both or neither, equivalent requests normalize to
    one key, and a resized image never exceeds ``max_size`` either way: nothing
    is ever upscaled beyond it. Without ``width``/``height`` the image keeps its
    own size (the stored default does too), whatever ``max_size``. Downscaling uses
    Lanczos (``Image.LANCZOS``) with Pillow's ``reducing_gap=3``: identical below
    a factor of 6; from 6 up, a box pre-reduction halves the time for at most a
    few grey levels (mean < 0.5, measured on the bundled files). Upscaling uses
    bicubic (no Lanczos ringing around sharp edges).
``format``
    ``png`` (default) or ``jpeg`` (``jpg`` and ``image/png``/``image/jpeg`` are
    accepted too). Without ``format`` the ``Accept`` header decides (q-values
    honoured; PNG on ties, for ``*/*``, ``image/*``, and when it names neither:
    an unusable Accept header is disregarded, as RFC 9110 allows).
``quality``
    JPEG quality 1..100, default 90. Always validated; meaningless for PNG, so
    dropped there (a PNG's ``quality`` is None and not part of its cache key).
``RenderParams.function`` (not a query key here: DICOMweb's ``window=C,W,function``, PS3.18 §8.3.5.1.3)
    LINEAR, LINEAR_EXACT or SIGMOID replacing the file's (0028,1056) VOI LUT Function.

JPEG output: baseline, 4:4:4 chroma (no subsampling: colour edges and burned-in
text stay sharp), no ``optimize`` pass; grey images stay one-channel (``L``).
PNG output: ``dicomsvc.png.encode_png`` (the same encoder as the stored PNG).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from ..errors import BadRequest, NoPixelData
from ..dicom.parse import Parsed, frame_count
from .png import encode_png
from .render import display_frame, to_display

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "RenderParams",
    "cache_key",
    "encode_jpeg",
    "is_default",
    "parse_params",
    "from_display",
    "render",
    "resize",
    "target_size",
]

Format = Literal["png", "jpeg"]

DEFAULT_JPEG_QUALITY = 90
DOWNSCALE_FILTER = Image.Resampling.LANCZOS
UPSCALE_FILTER = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
THUMBNAIL_REDUCING_GAP = 1.0  # thumbnails: box-reduce by the whole factor, then Lanczos the rest

_INT_RE = re.compile(r"^\s*([+-]?\d+)\s*$")
_FLOAT_RE = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")  # no nan/inf/hex/underscores
_MAX_DIGITS = 18
_FORMATS: dict[str, Format] = {
    "png": "png",
    "image/png": "png",
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "image/jpeg": "jpeg",
}
_MIME: dict[Format, str] = {"png": "image/png", "jpeg": "image/jpeg"}
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")  # PS3.3 C.11.2.1.3


@dataclass(frozen=True)
class RenderParams:
    frame: int = 1  # 1-based
    window: tuple[float, float] | None = None  # (center, width)
    width: int | None = None  # the box to fit in: both or neither (parse_params fills a missing one)
    height: int | None = None
    format: Format = "png"
    quality: int | None = None  # JPEG only (1..100); None for PNG
    # (0028,1056) VOI LUT Function replacing the file's: LINEAR, LINEAR_EXACT or SIGMOID
    # (PS3.3 C.11.2.1.3; PS3.18 §8.3.5.1.3 window=center,width,function); None keeps the file's
    function: str | None = None
    # A thumbnail (PS3.18 §10.4.3.3.4: the server decides what is meaningful): downscaled with
    # Pillow's reducing_gap=1, a box reduction by the whole factor (0.3 ms for 512 -> 256,
    # where Lanczos takes 5 ms) and Lanczos for what is left
    thumbnail: bool = False

    def __post_init__(self) -> None:
        # Normalized at construction, so equal renderings compare (and hash) equal.
        if self.format not in ("png", "jpeg"):
            raise ValueError(f"format must be 'png' or 'jpeg', got {self.format!r}")
        if self.function not in (None, *VOI_FUNCTIONS):
            raise ValueError(f"function must be one of {VOI_FUNCTIONS}, got {self.function!r}")
        if self.format == "jpeg" and self.quality is None:
            object.__setattr__(self, "quality", DEFAULT_JPEG_QUALITY)
        if self.format == "png":
            object.__setattr__(self, "quality", None)
        if self.window is not None:
            center, width = (float(v) + 0.0 for v in self.window)  # + 0.0: -0.0 becomes 0.0
            object.__setattr__(self, "window", (center, width))

    @property
    def media_type(self) -> str:
        return _MIME[self.format]


# Parsing ---------------------------------------------------------------------------


def parse_params(query: Mapping[str, str], accept: str | None, max_size: int) -> RenderParams:
    """Validate the query (and ``Accept``) of a render request; ``BadRequest`` on any error.

    Unknown keys (``id``, ...) are ignored. ``max_size`` is the largest output
    dimension a request may ask for; larger ``width``/``height`` are clamped to it.
    """
    if not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
    frame = _integer(query, "frame", default=1)
    if frame < 1:
        raise BadRequest(f"frame must be 1 or more (frames are numbered from 1), got {frame}")
    window = _window(query)
    width = _size(query, "width", max_size)
    height = _size(query, "height", max_size)
    if width is not None or height is not None:  # a dimension not asked is bounded by the maximum only
        width, height = width or max_size, height or max_size
    fmt = _format(query, accept)
    quality = _integer(query, "quality", default=None)
    if quality is not None and not 1 <= quality <= 100:
        raise BadRequest(f"quality must be between 1 and 100, got {quality}")
    return RenderParams(frame=frame, window=window, width=width, height=height, format=fmt, quality=quality)


def _integer(query: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = query.get(key)
    if raw is None:
        return default
    match = _INT_RE.match(raw)
    if match is None:
        raise BadRequest(f"{key} must be an integer, got {_shown(raw)}")
    if len(match.group(1).lstrip("+-")) > _MAX_DIGITS:
        raise BadRequest(f"{key} is out of range, got {_shown(raw)}")
    return int(match.group(1))  # the caller checks the range


def _size(query: Mapping[str, str], key: str, max_size: int) -> int | None:
    value = _integer(query, key, default=None)
    if value is None:
        return None
    if value < 1:
        raise BadRequest(f"{key} must be a positive number of pixels, got {value}")
    return min(value, max_size)


def _number(raw: str, what: str) -> float:
    if not _FLOAT_RE.match(raw):
        raise BadRequest(f"{what} must be a number, got {_shown(raw)}")
    value = float(raw)
    if not math.isfinite(value):  # 1e999
        raise BadRequest(f"{what} must be a finite number, got {_shown(raw)}")
    return value


def _window(query: Mapping[str, str]) -> tuple[float, float] | None:
    combined = query.get("window")
    center_raw, width_raw = query.get("windowCenter"), query.get("windowWidth")
    if combined is not None and (center_raw is not None or width_raw is not None):
        raise BadRequest("give either window=center,width or windowCenter and windowWidth, not both")
    if combined is not None:
        parts = combined.split(",")
        if len(parts) != 2:
            raise BadRequest(f"window must be 'center,width' (two numbers), got {_shown(combined)}")
        center, width = _number(parts[0], "window center"), _number(parts[1], "window width")
    elif center_raw is not None or width_raw is not None:
        if center_raw is None or width_raw is None:
            missing = "windowWidth" if width_raw is None else "windowCenter"
            raise BadRequest(f"windowCenter and windowWidth go together: {missing} is missing")
        center, width = _number(center_raw, "windowCenter"), _number(width_raw, "windowWidth")
    else:
        return None
    if width < 1:
        raise BadRequest(f"window width must be at least 1, got {width:g}")
    return center, width


def _format(query: Mapping[str, str], accept: str | None) -> Format:
    raw = query.get("format")
    if raw is not None:
        fmt = _FORMATS.get(raw.strip().lower())
        if fmt is None:
            raise BadRequest(f"format must be png or jpeg, got {_shown(raw)}")
        return fmt
    return _from_accept(accept)


def _from_accept(accept: str | None) -> Format:
    """PNG or JPEG, whichever ``Accept`` prefers (RFC 9110 12.5.1); PNG on a tie or no match."""
    if not accept or not accept.strip():
        return "png"
    ranges: list[tuple[str, str, float]] = []
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if "/" not in media:
            continue
        kind, sub = (s.strip().lower() for s in media.split("/", 1))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # a malformed weight: treat the range as not acceptable
        ranges.append((kind, sub, q))

    def weight(mime: str) -> float:
        kind, sub = mime.split("/")
        best, specificity = 0.0, -1
        for r_kind, r_sub, q in ranges:
            if (r_kind, r_sub) == (kind, sub):
                rank = 2
            elif (r_kind, r_sub) == (kind, "*"):
                rank = 1
            elif (r_kind, r_sub) == ("*", "*"):
                rank = 0
            else:
                continue
            if rank > specificity:  # the most specific range decides
                best, specificity = q, rank
        return best

    png, jpeg = weight("image/png"), weight("image/jpeg")
    return "jpeg" if jpeg > png else "png"


def _shown(raw: str) -> str:
    """A query value quoted for an error message, cut short."""
    return repr(raw if len(raw) <= 40 else raw[:40] + "...")


# Identity --------------------------------------------------------------------------


def is_default(params: RenderParams) -> bool:
    """Exactly the rendering stored at ingest: frame 1, the file's VOI, full size, PNG."""
    return params == RenderParams()


def cache_key(params: RenderParams) -> str:
    """A normalized, filesystem-safe name unique per distinct rendering.

    e.g. ``f1-png``, ``f3-w40,400-s256x256-jpeg-q90``, ``f1-w-600,1500-png``,
    ``f1-w40,400-vsigmoid-jpeg-q90`` (a VOI LUT Function asked for: ``vlinear.exact``...).
    Characters: ``[a-z0-9.,+-]`` only (``e``/``+`` from floats such as 1e+20).
    """
    parts = [f"f{params.frame}"]
    if params.window is not None:
        center, width = params.window
        parts.append(f"w{_num(center)},{_num(width)}")
    if params.width is not None or params.height is not None:
        w = "" if params.width is None else str(params.width)
        h = "" if params.height is None else str(params.height)
        parts.append(f"s{w}x{h}")  # "s256x" / "sx256" only for RenderParams built by hand
    if params.function is not None:
        parts.append("v" + params.function.lower().replace("_", "."))
    if params.thumbnail:
        parts.append("t")
    parts.append(params.format)
    if params.format == "jpeg":
        parts.append(f"q{params.quality}")
    return "-".join(parts)


def _num(value: float) -> str:
    """Shortest text that reads back as the same float: 40.0 -> '40', 0.1 -> '0.1', 1e+20."""
    text = repr(float(value) + 0.0)
    return text[:-2] if text.endswith(".0") else text


# Rendering -------------------------------------------------------------------------


def render(path: Path, parsed: Parsed, params: RenderParams) -> bytes:
    """The encoded image (PNG or JPEG bytes) for ``params``; decodes only the asked frame."""
    if parsed.pixel is None:
        raise NoPixelData("this instance has no pixel data")
    frames = frame_count(parsed.ds)
    if params.frame > frames:
        plural = "frame" if frames == 1 else "frames"
        raise BadRequest(f"frame {params.frame} is out of range: this instance has {frames} {plural}")
    frame = display_frame(path, parsed, params.frame - 1)  # YBR converted as dcmtk does
    # A narrow window on a SIGMOID file overflows exp() in render._window_values: the result
    # (0 or 255) is right, but numpy warns; the window comes from the client here, so hush it.
    ds = parsed.ds if params.function is None else _with_function(parsed.ds, params.function)
    with np.errstate(over="ignore"):
        pixels = to_display(frame, ds, window=params.window)
    return _finish(pixels, params)


def from_display(png: bytes, params: RenderParams) -> bytes:
    """``params`` made from the display pixels of its frame: the PNG rendered at ingest
    (frame 1, the file's own VOI: ``to_display``'s output, losslessly), resized and encoded.
    No parsing, decoding or windowing: for renderings with no window or function of their own."""
    if params.window is not None or params.function is not None:
        raise ValueError("a rendering with its own window is made from the DICOM data")
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image)
    return _finish(pixels, params)


def _finish(pixels: np.ndarray, params: RenderParams) -> bytes:
    image = resize(pixels, params.width, params.height, THUMBNAIL_REDUCING_GAP if params.thumbnail else REDUCING_GAP)
    if params.format == "png":
        return encode_png(image)
    return encode_jpeg(image, params.quality or DEFAULT_JPEG_QUALITY)


def _with_function(ds: Dataset, function: str) -> Dataset:
    """A new Dataset with ``ds``'s elements and (0028,1056) VOI LUT Function replaced; ``ds``
    is untouched (``Dataset(ds)`` would share its elements)."""
    copy = Dataset({tag: ds.get_item(tag) for tag in ds.keys()})
    copy[0x00281056] = DataElement(0x00281056, "CS", function)
    return copy


def target_size(columns: int, rows: int, width: int | None, height: int | None) -> tuple[int, int]:
    """(width, height) of a ``columns`` x ``rows`` image fitted in the asked box, aspect kept.

    ``width``/``height`` come from ``parse_params`` (clamped to the maximum, a
    missing one filled with it); for a hand-built box, a missing one leaves that
    dimension free.
    """
    if width is None and height is None:
        return columns, rows
    scales = []
    if width is not None:
        scales.append(width / columns)
    if height is not None:
        scales.append(height / rows)
    scale = min(scales)
    return max(1, round(columns * scale)), max(1, round(rows * scale))


def resize(
    pixels: np.ndarray, width: int | None, height: int | None, reducing_gap: float = REDUCING_GAP
) -> np.ndarray:
    """``pixels`` (H, W) or (H, W, 3) uint8 fitted in the box; the same array when no resize is needed."""
    rows, columns = pixels.shape[:2]
    out_w, out_h = target_size(columns, rows, width, height)
    if (out_w, out_h) == (columns, rows):
        return pixels
    image = Image.fromarray(pixels)
    if out_w * out_h < columns * rows:
        image = image.resize((out_w, out_h), DOWNSCALE_FILTER, reducing_gap=reducing_gap)
    else:
        image = image.resize((out_w, out_h), UPSCALE_FILTER)
    return np.asarray(image)


def encode_jpeg(pixels: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Baseline JPEG, 4:4:4; grey stays one channel."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()
