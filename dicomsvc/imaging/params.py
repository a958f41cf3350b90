"""Render parameters of ``GET /image`` and WADO-RS rendered/thumbnail (PS3.18 §8.3.5): the query
(and ``Accept``) validated into a ``RenderParams``, whether that is the PNG stored at ingest,
and its cache key. Pure parsing, no numpy or Pillow: the server process uses it and never
imports those (``dicomsvc.tasks``); ``dicomsvc.imaging.renderings`` re-exports it and
documents each parameter.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..errors import BadRequest

Format = Literal["png", "jpeg"]

DEFAULT_JPEG_QUALITY = 90

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
