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
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from ..errors import BadRequest, NoPixelData
from ..dicom.parse import Parsed, frame_count
from .png import encode_png
from .params import (  # the server's part, without numpy or Pillow: defined there, re-exported here
    DEFAULT_JPEG_QUALITY,
    VOI_FUNCTIONS,
    Format,
    RenderParams,
    cache_key,
    is_default,
    parse_params,
)
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

DOWNSCALE_FILTER = Image.Resampling.LANCZOS
UPSCALE_FILTER = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
THUMBNAIL_REDUCING_GAP = 1.0  # thumbnails: box-reduce by the whole factor, then Lanczos the rest


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
