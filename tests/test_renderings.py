"""On-demand renderings (dicomsvc.imaging.renderings): parameters, cache keys, frames, windows, sizes, formats.

Windowed and non-first-frame renders are checked pixel by pixel against dcmtk's
``dcmj2pnm --set-window C W --frame N`` (tests/refs/window, made by
tests/refs/make_window_refs.py).
"""

import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomfiles import counting_reads, make_ct, sample_file, save
from dicomsvc.imaging import renderings
from dicomsvc.imaging.png import encode_png
from dicomsvc.errors import BadRequest, NoPixelData
from dicomsvc.dicom.parse import read
from dicomsvc.imaging.render import decode_frame, display_frame, to_display
from dicomsvc.imaging.renderings import (
    RenderParams,
    cache_key,
    frame_count,
    is_default,
    parse_params,
    render,
    target_size,
)

MAX = 2048
WINDOW_REFS = Path(__file__).parent / "refs" / "window"
MANIFEST = json.loads((WINDOW_REFS / "manifest.json").read_text())
REFERENCES = {ref["name"]: ref for ref in MANIFEST["references"]}


def parse(accept: str | None = None, max_size: int = MAX, **query: str) -> RenderParams:
    return parse_params(query, accept, max_size)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode(data))


def instance(name: str):
    path = sample_file(name)
    return path, read(path)


def rendered(name: str, accept: str | None = None, max_size: int = MAX, **query: str) -> bytes:
    path, parsed = instance(name)
    return render(path, parsed, parse(accept, max_size, **query))


def display(name: str, frame: int = 1, window=None) -> np.ndarray:
    """What the default render shows (YBR converted with dcmtk's arithmetic, as /image does)."""
    path, parsed = instance(name)
    return to_display(display_frame(path, parsed, frame - 1), parsed.ds, window=window)


# Parameters -----------------------------------------------------------------------


def test_defaults():
    params = parse()
    assert params == RenderParams()
    assert (params.frame, params.window, params.width, params.height) == (1, None, None, None)
    assert (params.format, params.quality, params.media_type) == ("png", None, "image/png")
    assert is_default(params)
    assert parse(id="abc", other="x") == params  # keys that are not ours are the route's business


def test_params_are_frozen_and_hashable():
    params = parse(frame="2", window="40,400")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.frame = 3  # type: ignore[misc]
    assert len({params, parse(frame="2", windowCenter="40", windowWidth="400")}) == 1


@pytest.mark.parametrize("raw, frame", [("1", 1), ("3", 3), (" 7 ", 7), ("+2", 2), ("0015", 15)])
def test_frame(raw, frame):
    assert parse(frame=raw).frame == frame


@pytest.mark.parametrize(
    "raw, message",
    [
        ("abc", "frame must be an integer"),
        ("1.5", "frame must be an integer"),
        ("1e3", "frame must be an integer"),
        ("", "frame must be an integer"),
        ("0x10", "frame must be an integer"),
        ("0", "frame must be 1 or more"),
        ("-1", "frame must be 1 or more"),
        ("9" * 40, "frame is out of range"),
    ],
)
def test_bad_frame(raw, message):
    with pytest.raises(BadRequest, match=message) as err:
        parse(frame=raw)
    assert err.value.status == 400 and err.value.code == "bad_request"


@pytest.mark.parametrize(
    "query, window",
    [
        ({"window": "40,400"}, (40.0, 400.0)),
        ({"window": "-600, 1500"}, (-600.0, 1500.0)),
        ({"window": "40.5,255.5"}, (40.5, 255.5)),
        ({"window": "1e3,2E3"}, (1000.0, 2000.0)),
        ({"window": "0,1"}, (0.0, 1.0)),  # the narrowest usable window
        ({"window": "-0,400"}, (0.0, 400.0)),
        ({"windowCenter": "40", "windowWidth": "400"}, (40.0, 400.0)),
        ({"windowCenter": "-1024.5", "windowWidth": ".5e1"}, (-1024.5, 5.0)),
    ],
)
def test_window(query, window):
    assert parse(**query).window == window


@pytest.mark.parametrize(
    "query, message",
    [
        ({"window": "40"}, "window must be 'center,width'"),
        ({"window": "40,400,600"}, "window must be 'center,width'"),
        ({"window": ""}, "window must be 'center,width'"),
        ({"window": "a,400"}, "window center must be a number"),
        ({"window": "40,"}, "window width must be a number"),
        ({"window": "nan,400"}, "window center must be a number"),
        ({"window": "40,inf"}, "window width must be a number"),
        ({"window": "40,1e999"}, "window width must be a finite number"),
        ({"window": "40,0"}, "window width must be at least 1"),
        ({"window": "40,0.5"}, "window width must be at least 1"),
        ({"window": "40,-400"}, "window width must be at least 1"),
        ({"windowCenter": "40"}, "windowWidth is missing"),
        ({"windowWidth": "400"}, "windowCenter is missing"),
        ({"windowCenter": "x", "windowWidth": "400"}, "windowCenter must be a number"),
        ({"windowCenter": "40", "windowWidth": "0"}, "window width must be at least 1"),
        ({"window": "40,400", "windowCenter": "40", "windowWidth": "400"}, "not both"),
        ({"window": "40,400", "windowWidth": "400"}, "not both"),
    ],
)
def test_bad_window(query, message):
    with pytest.raises(BadRequest, match=message):
        parse(**query)


def test_size_fills_a_missing_dimension_with_the_maximum_and_clamps():
    assert (parse(width="256", height="128").width, parse(width="256", height="128").height) == (256, 128)
    only_width = parse(width="256")
    assert (only_width.width, only_width.height) == (256, MAX)
    only_height = parse(height="100")
    assert (only_height.width, only_height.height) == (MAX, 100)
    # above the maximum: clamped, not refused
    big = parse(width="100000", height="5000", max_size=1024)
    assert (big.width, big.height) == (1024, 1024)
    assert parse(width="1024", max_size=1024) == parse(width="1025", max_size=1024) == parse(width="9" * 18, max_size=1024)


@pytest.mark.parametrize(
    "query, message",
    [
        ({"width": "0"}, "width must be a positive number of pixels"),
        ({"width": "-5"}, "width must be a positive number of pixels"),
        ({"height": "0"}, "height must be a positive number of pixels"),
        ({"width": "12.5"}, "width must be an integer"),
        ({"height": "big"}, "height must be an integer"),
        ({"width": ""}, "width must be an integer"),
    ],
)
def test_bad_size(query, message):
    with pytest.raises(BadRequest, match=message):
        parse(**query)


def test_max_size_is_the_callers_to_get_right():
    with pytest.raises(ValueError):
        parse_params({}, None, 0)


@pytest.mark.parametrize(
    "raw, fmt", [("png", "png"), ("PNG", "png"), ("image/png", "png"), ("jpeg", "jpeg"), ("jpg", "jpeg"), ("JPEG", "jpeg"), ("image/jpeg", "jpeg")]
)
def test_format(raw, fmt):
    assert parse(format=raw).format == fmt


@pytest.mark.parametrize("raw", ["gif", "", "webp", "image/gif", "png,jpeg"])
def test_bad_format(raw):
    with pytest.raises(BadRequest, match="format must be png or jpeg"):
        parse(format=raw)


@pytest.mark.parametrize(
    "accept, fmt",
    [
        (None, "png"),
        ("", "png"),
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("IMAGE/JPEG", "jpeg"),
        ("*/*", "png"),
        ("image/*", "png"),
        ("image/jpeg, image/png", "png"),  # a tie: the lossless default
        ("image/jpeg, image/png;q=0.5", "jpeg"),
        ("image/png;q=0.1, image/jpeg;q=0.9", "jpeg"),
        ("image/png;q=0, */*", "jpeg"),  # q=0: not acceptable
        ("image/*;q=0.5, image/jpeg", "jpeg"),  # the most specific range decides
        ("image/avif,image/webp,image/apng,image/*,*/*;q=0.8", "png"),  # a browser's <img>
        ("text/html, application/json", "png"),  # names neither: disregarded
        ("image/jpeg;q=abc", "png"),  # a malformed weight is not acceptable
        ("garbage", "png"),
    ],
)
def test_accept(accept, fmt):
    assert parse(accept).format == fmt


def test_format_wins_over_accept():
    assert parse("image/jpeg", format="png").format == "png"
    assert parse("image/png", format="jpeg").format == "jpeg"


def test_quality():
    assert parse(format="jpeg").quality == 90
    assert parse(format="jpeg", quality="75").quality == 75
    assert parse(format="jpeg", quality="1").quality == 1
    assert parse(format="jpeg", quality="100").quality == 100
    assert parse("image/jpeg", quality="60").quality == 60
    # meaningless for PNG: dropped (but still validated)
    assert parse(format="png", quality="75") == parse()
    assert parse(format="png", quality="75").quality is None


@pytest.mark.parametrize(
    "raw, message",
    [("0", "quality must be between 1 and 100"), ("101", "quality must be between 1 and 100"),
     ("-5", "quality must be between 1 and 100"), ("high", "quality must be an integer"), ("9.5", "quality must be an integer")],
)
def test_bad_quality(raw, message):
    with pytest.raises(BadRequest, match=message):
        parse(format="jpeg", quality=raw)
    with pytest.raises(BadRequest, match=message):
        parse(format="png", quality=raw)


def test_is_default():
    assert is_default(parse())
    assert is_default(parse(frame="1", format="png"))
    assert is_default(parse("image/png"))
    assert is_default(parse("*/*", quality="80"))
    for query in ({"frame": "2"}, {"window": "40,400"}, {"width": "256"}, {"height": "256"}, {"format": "jpeg"}):
        assert not is_default(parse(**query)), query
    assert not is_default(parse("image/jpeg"))


# Cache keys -----------------------------------------------------------------------

SAFE = re.compile(r"^[a-z0-9.,+-]+$")


def test_cache_key_shape():
    assert cache_key(parse()) == "f1-png"
    assert cache_key(parse(window="40,400", width="256", height="256", format="jpeg")) == "f1-w40,400-s256x256-jpeg-q90"
    assert cache_key(parse(frame="3", window="-600,1500.5", format="jpeg", quality="75")) == "f3-w-600,1500.5-jpeg-q75"
    assert cache_key(parse(width="256")) == f"f1-s256x{MAX}-png"


@pytest.mark.parametrize(
    "a, b",
    [
        (({}, None), ({"frame": "1", "format": "png"}, None)),
        (({"window": "40,400"}, None), ({"windowCenter": "40", "windowWidth": "400"}, None)),
        (({"window": "40,400"}, None), ({"window": "40.0, 400.00"}, None)),
        (({"window": "40,400"}, None), ({"window": "4e1,4E2"}, None)),
        (({"window": "0,400"}, None), ({"window": "-0,400"}, None)),
        (({"format": "jpeg"}, None), ({}, "image/jpeg")),
        (({"format": "jpeg"}, None), ({"format": "jpg", "quality": "90"}, None)),
        (({"format": "png"}, None), ({"quality": "50"}, "image/png")),
        (({"frame": "3"}, None), ({"frame": "+03"}, None)),
        (({"width": str(MAX)}, None), ({"width": "99999"}, None)),
        (({"width": "256"}, None), ({"width": "256", "height": str(MAX)}, None)),
        (({"height": "256"}, None), ({"height": "256", "width": "1000000"}, None)),
    ],
)
def test_cache_key_is_equal_for_equivalent_requests(a, b):
    (qa, aa), (qb, ab) = a, b
    assert cache_key(parse_params(qa, aa, MAX)) == cache_key(parse_params(qb, ab, MAX))


def test_cache_key_is_unique_per_rendering():
    queries = [
        {},
        {"frame": "2"},
        {"frame": "12"},
        {"window": "40,400"},
        {"window": "400,40"},
        {"window": "4,0400"},
        {"window": "40.5,400"},
        {"window": "0.1,400"},
        {"window": "0.10000000000000002,400"},  # the next float: still a different window
        {"window": "-40,400"},
        {"window": "1e20,400"},
        {"width": "256"},
        {"height": "256"},
        {"width": "256", "height": "256"},
        {"width": "25", "height": "6256"},
        {"format": "jpeg"},
        {"format": "jpeg", "quality": "91"},
        {"format": "jpeg", "quality": "9"},
        {"frame": "2", "window": "40,400", "width": "64", "format": "jpeg", "quality": "50"},
    ]
    params = [parse(**q) for q in queries]
    assert len(set(params)) == len(params)
    keys = [cache_key(p) for p in params]
    assert len(set(keys)) == len(keys), keys
    for key in keys:
        assert SAFE.match(key) and len(key) < 100 and not key.startswith(("-", ".")), key


def test_thumbnails_are_box_reduced_then_lanczos():
    full = parse(width="64", height="64", format="png")
    thumb = dataclasses.replace(full, thumbnail=True)
    assert cache_key(thumb) == "f1-s64x64-t-png" != cache_key(full) and SAFE.match(cache_key(thumb))
    path, parsed = instance("CT_small.dcm")  # 128 x 128: a factor of 2, one box reduction
    shown = display("CT_small.dcm")
    box = shown.astype(np.float64).reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.abs(pixels(render(path, parsed, thumb)).astype(np.float64) - box).max() <= 1
    assert not np.array_equal(pixels(render(path, parsed, thumb)), pixels(render(path, parsed, full)))


def test_from_display_is_render_without_the_dicom():
    path, parsed = instance("CT_small.dcm")
    png = encode_png(display("CT_small.dcm"))  # what ingest stores
    for params in (dataclasses.replace(parse(width="64", height="64", format="jpeg"), thumbnail=True),
                   parse(width="100", format="png"), parse(format="jpeg", quality="70")):  # fmt: skip
        assert renderings.from_display(png, params) == render(path, parsed, params)
    with pytest.raises(ValueError):
        renderings.from_display(png, parse(window="40,400"))


def test_a_voi_lut_function_replaces_the_files():
    """DICOMweb's window=center,width,function (PS3.18 §8.3.5.1.3): RenderParams.function."""
    window = parse(window="40,400")
    functions = [dataclasses.replace(window, function=f) for f in (None, "LINEAR", "LINEAR_EXACT", "SIGMOID")]
    keys = [cache_key(p) for p in functions]
    assert len(set(keys)) == 4 and all(SAFE.match(k) for k in keys)
    assert keys[3] == "f1-w40,400-vsigmoid-png" and keys[2] == "f1-w40,400-vlinear.exact-png"
    path, parsed = instance("CT_small.dcm")
    linear, sigmoid = (renderings.render(path, parsed, p) for p in (functions[1], functions[3]))
    assert np.array_equal(pixels(linear), pixels(render(path, parsed, window)))  # CT_small has no function: LINEAR
    assert not np.array_equal(pixels(sigmoid), pixels(linear))
    assert "VOILUTFunction" not in parsed.ds  # the caller's data set is untouched
    with pytest.raises(ValueError):
        RenderParams(function="CUBIC")


def test_cache_key_is_safe_for_awkward_numbers():
    for window in ("1e300,1e300", "-1e-300,1", "123456789.123456789,1.5", "0.000001,1"):
        key = cache_key(parse(window=window))
        assert SAFE.match(key), key


# Windows against dcmtk ------------------------------------------------------------


def derived(ref: dict, tmp_path: Path) -> Path:
    """The file make_window_refs.py rendered: the bundled one, or a copy with ``derive`` set."""
    source = sample_file(ref["file"])
    if not ref["derive"]:
        return source
    ds = pydicom.dcmread(source)
    for keyword, value in ref["derive"].items():
        setattr(ds, keyword, value)
    target = tmp_path / f"{ref['name']}.dcm"
    ds.save_as(target)
    return target


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_window_and_frame_match_dcmtk(name, tmp_path):
    ref = REFERENCES[name]
    path = derived(ref, tmp_path)
    center, width = ref["window"]
    query = {"frame": str(ref["frame"]), "window": f"{center},{width}"}
    data = render(path, read(path), parse_params(query, None, MAX))
    ours = pixels(data)
    theirs = np.asarray(Image.open(WINDOW_REFS / ref["png"]))
    if theirs.ndim == 3 and ours.ndim == 2:  # dcmj2pnm wrote a grey image as RGB
        ours = np.stack([ours] * 3, axis=-1)
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1, f"max diff {diff.max()}, {np.count_nonzero(diff > 1)} pixels"


def test_window_references_cover_what_matters():
    refs = MANIFEST["references"]
    files = {ref["file"] for ref in refs}
    assert {"CT_small.dcm", "MR_small.dcm"} <= files
    assert any(r["bits_allocated"] == 16 and r["pixel_representation"] == 1 for r in refs)  # signed 16-bit
    grey_multi = [r for r in refs if r["number_of_frames"] > 1 and r["photometric"].startswith("MONOCHROME")]
    assert any(r["frame"] > 1 for r in grey_multi)
    assert any(r["derive"].get("PhotometricInterpretation") == "MONOCHROME1" for r in refs)
    assert any(r["photometric"] == "RGB" and r["frame"] > 1 for r in refs)
    assert any(r["window"][1] == 1 for r in refs)
    assert all("--set-window" in r["command"] for r in refs)


def test_the_window_replaces_the_files_own():
    # MR_small carries 600/1600; asking for 300/600 must change the picture
    assert not np.array_equal(display("MR_small.dcm"), display("MR_small.dcm", window=(300.0, 600.0)))
    assert np.array_equal(display("MR_small.dcm"), display("MR_small.dcm", window=(600.0, 1600.0)))


def ramp_ct(**kwargs) -> Dataset:
    return make_ct(np.arange(0, 2048, dtype=np.int16).reshape(32, 64), **kwargs)


def _voi_lut_sequence() -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new(0x00283006, "US", list(range(65535, 0, -256)))  # LUT Data
    return Sequence([item])


@pytest.mark.parametrize(
    "elements",
    [
        {},
        {"PhotometricInterpretation": "MONOCHROME1"},
        {"VOILUTFunction": "SIGMOID"},
        {"VOILUTFunction": "LINEAR_EXACT"},
        {"RescaleSlope": 2.5, "RescaleIntercept": -100.0},
        {"PhotometricInterpretation": "MONOCHROME1", "VOILUTFunction": "SIGMOID"},
    ],
)
@pytest.mark.parametrize("window", [(40.0, 400.0), (-500.5, 1.0), (0.0, 3000.0)])
def test_a_window_given_is_the_window_in_the_file(tmp_path, elements, window):
    # the override must render exactly as a file carrying that window (same rescale, function, polarity)
    photometric = elements.get("PhotometricInterpretation", "MONOCHROME2")
    rest = {k: v for k, v in elements.items() if k != "PhotometricInterpretation"}
    slope, intercept = rest.pop("RescaleSlope", 1.0), rest.pop("RescaleIntercept", -1024.0)
    plain = ramp_ct(window=None, photometric=photometric, slope=slope, intercept=intercept, **rest)
    own = ramp_ct(window=window, photometric=photometric, slope=slope, intercept=intercept, **rest)
    other = ramp_ct(window=(1000.0, 50.0), photometric=photometric, slope=slope, intercept=intercept, **rest)
    with_lut = ramp_ct(window=None, photometric=photometric, slope=slope, intercept=intercept, **rest)
    with_lut.VOILUTSequence = _voi_lut_sequence()
    expected = decoded_display(own, tmp_path / "own.dcm")
    for ds in (plain, other, with_lut):  # min–max, another window, a VOI LUT: all replaced
        assert np.array_equal(decoded_display(ds, tmp_path / "x.dcm", window), expected)


def decoded_display(ds: Dataset, path: Path, window=None) -> np.ndarray:
    save(ds, path)
    parsed = read(path)
    with np.errstate(over="ignore"):  # SIGMOID with width 1 overflows exp() (to 0/255, correctly)
        return to_display(decode_frame(path, parsed, 0), parsed.ds, window=window)


def test_window_on_32bit_and_float_frames():
    frame = np.arange(0, 1000, dtype=np.uint32).reshape(10, 100) * 1000
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    out = to_display(frame, ds, window=(500000.0, 200000.0))
    as_file = Dataset()
    as_file.PhotometricInterpretation = "MONOCHROME2"
    as_file.WindowCenter, as_file.WindowWidth = 500000.0, 200000.0
    assert np.array_equal(out, to_display(frame, as_file))
    assert out.min() == 0 and out.max() == 255
    floats = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    narrow = to_display(floats, ds, window=(0.0, 1.0))
    assert set(np.unique(narrow)) == {0, 255}


def test_colour_ignores_the_window():
    for name, frame in (("SC_rgb_rle_2frame.dcm", 2), ("examples_palette.dcm", 1), ("SC_ybr_full_422_uncompressed.dcm", 1)):
        assert np.array_equal(display(name, frame), display(name, frame, window=(10.0, 5.0))), name
        assert np.array_equal(pixels(rendered(name, frame=str(frame), window="10,5")), display(name, frame)), name


# Frames ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_rle.dcm"])
@pytest.mark.parametrize("frame", [1, 2, 8, 15])
def test_frame_matches_pydicoms_own_pixel_array(name, frame):
    path, parsed = instance(name)
    full = pydicom.dcmread(path)
    assert full.NumberOfFrames == 15
    expected = to_display(full.pixel_array[frame - 1], parsed.ds)  # every frame decoded by pydicom
    assert np.array_equal(pixels(rendered(name, frame=str(frame))), expected)
    windowed = to_display(full.pixel_array[frame - 1], parsed.ds, window=(1000000.0, 300000.0))
    assert np.array_equal(pixels(rendered(name, frame=str(frame), window="1000000,300000")), windowed)


def test_colour_frame_matches_pydicoms_own_pixel_array():
    path, parsed = instance("SC_rgb_rle_2frame.dcm")
    full = pydicom.dcmread(path).pixel_array
    for frame in (1, 2):
        assert np.array_equal(pixels(rendered("SC_rgb_rle_2frame.dcm", frame=str(frame))), full[frame - 1])
    assert not np.array_equal(full[0], full[1])


def test_frames_differ():
    # else the frame tests above would prove nothing
    first, eighth = (pixels(rendered("rtdose.dcm", frame=f, window="1000000,300000")) for f in ("1", "8"))
    assert not np.array_equal(first, eighth)


@pytest.mark.parametrize("name, frames", [("rtdose.dcm", 15), ("rtdose_rle.dcm", 15), ("CT_small.dcm", 1), ("SC_rgb_rle_2frame.dcm", 2)])
def test_frame_out_of_range(name, frames):
    with pytest.raises(BadRequest, match=rf"frame {frames + 1} is out of range: this instance has {frames} frames?$") as err:
        rendered(name, frame=str(frames + 1))
    assert err.value.status == 400
    rendered(name, frame=str(frames))  # the last one is fine


def test_frame_count():
    ds = Dataset()
    assert frame_count(ds) == 1
    ds.NumberOfFrames = 15
    assert frame_count(ds) == 15
    assert frame_count(read(sample_file("badVR.dcm")).ds) == 1  # Number of Frames "1A": read as dcmtk does
    assert frame_count(read(sample_file("rtdose_rle.dcm")).ds) == 15
    zero = Dataset()
    zero.NumberOfFrames = 0
    assert frame_count(zero) == 1


def test_no_pixel_data_wins_over_the_frame_check():
    path, parsed = instance("rtplan.dcm")
    with pytest.raises(NoPixelData):
        render(path, parsed, parse(frame="2"))


def test_only_the_asked_frame_is_decoded(monkeypatch):
    from dicomsvc.imaging import render as render_module

    calls = []
    real = render_module.decode_frame

    def spy(path, parsed, index=0, **kwargs):
        calls.append(index)
        return real(path, parsed, index, **kwargs)

    monkeypatch.setattr(render_module, "decode_frame", spy)  # what renderings' display_frame calls
    rendered("rtdose_rle.dcm", frame="9")
    rendered("rtdose.dcm", frame="15")
    rendered("rtdose.dcm")
    assert calls == [8, 14, 0]


def test_only_the_asked_frames_bytes_are_read(tmp_path, monkeypatch):
    frames = np.stack([np.full((64, 64), i * 100, np.int16) for i in range(6)])
    ds = make_ct(frames.reshape(6 * 64, 64), window=None)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 64, 64, 6
    path = save(ds, tmp_path / "multi.dcm")
    reads = counting_reads(monkeypatch)  # from the moment the file is opened: parsing included
    parsed = read(path)
    data = render(path, parsed, parse(frame="5", window="0,1000"))
    monkeypatch.undo()
    assert sum(n for n in reads if n > 0) <= 64 * 64 * 2 + 4096  # one frame of six, and the header
    expected = to_display(frames[4], parsed.ds, window=(0.0, 1000.0))
    assert np.array_equal(pixels(data), expected)


def test_encapsulated_frame_reads_a_fraction_of_the_file(monkeypatch):
    path, parsed = instance("rtdose_rle.dcm")
    # Rendering alone: parse's fast reader asks for its first 8 KiB in one read, more than
    # this 6.8 KB file holds (tests/test_parse.py checks that parsing skips pixel data)
    reads = counting_reads(monkeypatch)
    render(path, parsed, parse(frame="15"))
    monkeypatch.undo()
    # one frame of 15 and the item headers
    assert sum(n for n in reads if n > 0) < parsed.pixel.length / 5


# Sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, box, out",
    [
        ((512, 256), (256, 256), (256, 128)),
        ((256, 512), (256, 256), (128, 256)),
        ((512, 512), (100, 50), (50, 50)),
        ((484, 300), (242, MAX), (242, 150)),
        ((484, 300), (MAX, 100), (161, 100)),
        ((64, 64), (128, 128), (128, 128)),  # up
        ((10, 1000), (1, 1), (1, 1)),  # never 0
        ((512, 512), (None, None), (512, 512)),
    ],
)
def test_target_size(size, box, out):
    assert target_size(*size, *box) == out


def test_downscale_keeps_aspect():
    data = rendered("examples_overlay.dcm", width="242")  # 484 x 300
    image = decode(data)
    assert image.size == (242, 150) and image.mode == "L"
    assert decode(rendered("examples_overlay.dcm", height="30")).size == (48, 30)
    assert decode(rendered("examples_overlay.dcm", width="100", height="100")).size == (100, 62)
    colour = decode(rendered("examples_rgb_color.dcm", width="160"))  # 320 x 240
    assert colour.size == (160, 120) and colour.mode == "RGB"


def test_downscale_is_a_filtered_average():
    # Lanczos: close to the 2x2 block mean, not a decimation (which keeps one pixel of four)
    full = display("examples_overlay.dcm").astype(float)
    half = pixels(rendered("examples_overlay.dcm", width="242")).astype(float)
    blocks = full.reshape(150, 2, 242, 2).mean(axis=(1, 3))
    assert np.abs(half - blocks).mean() < 3
    assert np.abs(half - blocks).mean() < np.abs(full[::2, ::2] - blocks).mean()


def test_upscale_up_to_the_maximum():
    image = decode(rendered("MR_small.dcm", width="256"))  # 64 x 64
    assert image.size == (256, 256)
    assert decode(rendered("MR_small.dcm", width="256", max_size=100)).size == (100, 100)


def test_never_beyond_the_maximum(tmp_path):
    # a tall, thin image (8 x 64) asked 64 wide: 8x would make it 512 tall; the maximum is 128
    ds = make_ct(np.arange(8 * 64, dtype=np.int16).reshape(64, 8))
    path = save(ds, tmp_path / "tall.dcm")
    parsed = read(path)
    image = decode(render(path, parsed, parse(width="64", max_size=128)))
    assert image.size == (16, 128)
    for query in ({"width": "100000"}, {"height": "100000"}, {"width": "100000", "height": "100000"}):
        image = decode(render(path, parsed, parse(max_size=128, **query)))
        assert max(image.size) <= 128 and image.size == (16, 128), query
    wide = decode(rendered("examples_overlay.dcm", width="5000", max_size=300))  # 484 x 300
    assert wide.size == (300, 186)


def test_the_same_size_is_not_resampled():
    assert np.array_equal(pixels(rendered("examples_overlay.dcm", width="484", height="300")), display("examples_overlay.dcm"))


def test_without_a_size_the_native_size_stays_even_above_the_maximum():
    assert decode(rendered("examples_overlay.dcm", max_size=100)).size == (484, 300)


# Formats --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, query",
    [
        ("CT_small.dcm", {}),
        ("CT_small.dcm", {"window": "40,400"}),
        ("MR_small.dcm", {"window": "300,600"}),
        ("rtdose.dcm", {"frame": "8"}),
        ("SC_rgb_rle_2frame.dcm", {"frame": "2"}),
        ("examples_palette.dcm", {}),
        ("liver_1frame.dcm", {"window": "1,1"}),
    ],
)
def test_png_is_pixel_identical_to_to_display(name, query):
    data = rendered(name, **query)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    window = tuple(float(v) for v in query["window"].split(",")) if "window" in query else None
    expected = display(name, int(query.get("frame", 1)), window)
    image = decode(data)
    assert image.mode == ("L" if expected.ndim == 2 else "RGB")
    assert np.array_equal(np.asarray(image), expected)


@pytest.mark.parametrize(
    "name, query, mode, size",
    [
        ("CT_small.dcm", {"window": "40,400"}, "L", (128, 128)),
        ("MR_small.dcm", {}, "L", (64, 64)),
        ("examples_overlay.dcm", {}, "L", (484, 300)),
        ("rtdose.dcm", {"frame": "8"}, "L", (10, 10)),
        ("SC_rgb_rle_2frame.dcm", {"frame": "2"}, "RGB", (100, 100)),
        ("examples_rgb_color.dcm", {}, "RGB", (320, 240)),
    ],
)
def test_jpeg_decodes_close_to_the_png(name, query, mode, size):
    jpeg = rendered(name, format="jpeg", **query)
    assert jpeg.startswith(b"\xff\xd8\xff")
    image = decode(jpeg)
    assert image.format == "JPEG" and image.mode == mode and image.size == size  # grey stays one channel
    png = pixels(rendered(name, **query)).astype(int)
    diff = np.abs(np.asarray(image).astype(int) - png)
    assert diff.mean() < 3, diff.mean()  # quality 90


def test_jpeg_quality_and_size():
    small = rendered("examples_overlay.dcm", format="jpeg", quality="30")
    large = rendered("examples_overlay.dcm", format="jpeg", quality="95")
    assert len(small) < len(large)
    assert rendered("examples_overlay.dcm", format="jpeg") == rendered("examples_overlay.dcm", format="jpeg", quality="90")
    image = decode(rendered("examples_overlay.dcm", "image/jpeg", width="121"))
    assert image.format == "JPEG" and image.size == (121, 75) and image.mode == "L"


def test_colour_jpeg_keeps_full_chroma():
    # 4:4:4: the chroma of a one-pixel-wide colour detail survives
    image = decode(rendered("examples_rgb_color.dcm", format="jpeg", quality="95"))
    assert [layer[:3] for layer in image.layer] == [(1, 1, 1), (2, 1, 1), (3, 1, 1)]  # (id, h, v) sampling


def test_a_narrow_sigmoid_window_renders_without_warnings(tmp_path):
    # exp() overflows for pixels far below the center: the pixel is 0, and no warning escapes
    path = save(ramp_ct(window=None, VOILUTFunction="SIGMOID"), tmp_path / "sigmoid.dcm")
    out = pixels(render(path, read(path), parse(window="-500.5,1")))
    hu = np.arange(0, 2048).reshape(32, 64) - 1024
    assert (out[hu < -501] == 0).all() and (out[hu > -500] >= 254).all()


def test_rendering_is_deterministic():
    query = {"frame": "8", "window": "1000000,300000", "width": "40", "format": "jpeg"}
    assert rendered("rtdose.dcm", **query) == rendered("rtdose.dcm", **query)
