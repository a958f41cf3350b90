"""dicomsvc.imaging.png: output must decode pixel-identical (Pillow, and an independent
pure-Python reference decoder), with well-formed chunks and CRCs."""

from __future__ import annotations

import importlib.util
import io
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from dicomsvc.imaging import png
from dicomsvc.imaging.png import encode_png

pytestmark = pytest.mark.same_in_scale_run("the PNG encoder is a pure function")

FILTERS = ("none", "sub", "up", "average", "paeth")
SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# helpers: an independent reader, written from the PNG spec
# --------------------------------------------------------------------------
def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk; asserts signature, lengths and CRCs (stdlib zlib)."""
    assert data[:8] == SIGNATURE
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert len(payload) == length, f"{kind!r} chunk truncated"
        assert crc == zlib.crc32(kind + payload), f"bad CRC in {kind!r} chunk"
        out.append((kind, payload))
        pos += 12 + length
    assert pos == len(data)
    return out


def ihdr(data: bytes) -> dict:
    kind, payload = chunks(data)[0]
    assert kind == b"IHDR" and len(payload) == 13
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", payload)
    return dict(width=w, height=h, depth=depth, colour=colour, compression=comp, filter=filt, interlace=interlace)


def reference_decode(data: bytes) -> tuple[np.ndarray, list[int]]:
    """Pixels and per-row filter types, unfiltered byte by byte as PNG spec section 9 says."""
    info = ihdr(data)
    bpp = {0: 1, 2: 3}[info["colour"]]
    raw = zlib.decompress(b"".join(p for k, p in chunks(data) if k == b"IDAT"))
    stride = info["width"] * bpp
    assert len(raw) == info["height"] * (stride + 1)
    prev = [0] * stride
    rows, types = [], []
    for r in range(info["height"]):
        line = raw[r * (stride + 1) : (r + 1) * (stride + 1)]
        ftype, cur = line[0], list(line[1:])
        types.append(ftype)
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                raise AssertionError(f"invalid filter type {ftype}")
            cur[i] = (cur[i] + pred) & 0xFF
        rows.append(cur)
        prev = cur
    shape = (info["height"], info["width"]) + ((3,) if bpp == 3 else ())
    return np.array(rows, dtype=np.uint8).reshape(shape), types


def pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "PNG"
        return np.asarray(im)


def assert_roundtrip(arr: np.ndarray, **kwargs) -> bytes:
    data = encode_png(arr, **kwargs)
    back = pillow_decode(data)
    assert back.dtype == np.uint8 and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    return data


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240314)
    yy, xx = np.mgrid[0:96, 0:128]
    disc = ((xx - 64) ** 2 + (yy - 48) ** 2 < 40**2) * (120 + rng.normal(0, 12, xx.shape))
    grad = ((xx * 2 + yy) % 256).astype(np.uint8)
    return {
        "grey 1x1": np.array([[200]], np.uint8),
        "grey 1xN": rng.integers(0, 256, (1, 37), dtype=np.uint8),
        "grey Nx1": rng.integers(0, 256, (37, 1), dtype=np.uint8),
        "grey 7x13 noise": rng.integers(0, 256, (7, 13), dtype=np.uint8),
        "grey zeros": np.zeros((16, 24), np.uint8),
        "grey 255": np.full((16, 24), 255, np.uint8),
        "grey noise": rng.integers(0, 256, (64, 80), dtype=np.uint8),
        "grey gradient": grad,
        "grey ct-like disc": np.clip(disc, 0, 255).astype(np.uint8),
        "rgb 1x1": np.array([[[1, 128, 255]]], np.uint8),
        "rgb 1xN": rng.integers(0, 256, (1, 37, 3), dtype=np.uint8),
        "rgb Nx1": rng.integers(0, 256, (37, 1, 3), dtype=np.uint8),
        "rgb 7x13 noise": rng.integers(0, 256, (7, 13, 3), dtype=np.uint8),
        "rgb zeros": np.zeros((16, 24, 3), np.uint8),
        "rgb 255": np.full((16, 24, 3), 255, np.uint8),
        "rgb noise": rng.integers(0, 256, (64, 80, 3), dtype=np.uint8),
        "rgb gradient": np.stack([grad, grad[::-1], 255 - grad], axis=-1),
    }


IMAGES = _images()
SMALL = [k for k, v in IMAGES.items() if v.size <= 4000]  # cheap enough for the Python decoder


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------
@pytest.mark.parametrize("row_filter", FILTERS)
@pytest.mark.parametrize("name", IMAGES)
def test_pillow_roundtrip(name: str, row_filter: str) -> None:
    assert_roundtrip(IMAGES[name], row_filter=row_filter)


@pytest.mark.parametrize("row_filter", FILTERS)
@pytest.mark.parametrize("name", SMALL)
def test_reference_decoder_and_filter_bytes(name: str, row_filter: str) -> None:
    arr = IMAGES[name]
    pixels, types = reference_decode(encode_png(arr, row_filter=row_filter))
    np.testing.assert_array_equal(pixels, arr)
    assert types == [FILTERS.index(row_filter)] * arr.shape[0]


def test_default_is_average_filter_level_1() -> None:
    arr = IMAGES["grey ct-like disc"]
    data = encode_png(arr)
    assert data == encode_png(arr, level=1, row_filter="average")
    _, types = reference_decode(data)
    assert set(types) == {3}


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("name", ["grey noise", "rgb gradient"])
def test_levels(name: str, level: int) -> None:
    assert_roundtrip(IMAGES[name], level=level)


@pytest.mark.parametrize("shape", [(512, 512), (512, 512, 3), (300, 301), (3, 1001, 3)])
def test_large_and_odd(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    arr = (rng.normal(128, 30, shape).clip(0, 255)).astype(np.uint8)
    for row_filter in FILTERS:
        assert_roundtrip(arr, row_filter=row_filter)


def test_compresses_smooth_images() -> None:
    arr = np.zeros((256, 256), np.uint8)
    arr[64:192, 64:192] = 100
    assert len(encode_png(arr)) < 2000  # raw size 65536


def test_non_contiguous_input() -> None:
    base = IMAGES["rgb noise"]
    for view in (base[::2, ::3], base[:, ::-1], base.transpose(1, 0, 2), IMAGES["grey noise"].T):
        assert not view.flags.c_contiguous
        assert_roundtrip(view)


def test_input_not_modified() -> None:
    arr = IMAGES["rgb noise"].copy()
    before = arr.copy()
    for row_filter in FILTERS:
        encode_png(arr, row_filter=row_filter)
    np.testing.assert_array_equal(arr, before)


def test_deterministic() -> None:
    arr = IMAGES["grey ct-like disc"]
    assert encode_png(arr) == encode_png(arr.copy())


# --------------------------------------------------------------------------
# container format
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,colour", [("grey 7x13 noise", 0), ("rgb 7x13 noise", 2), ("grey Nx1", 0), ("rgb 1xN", 2)]
)
def test_ihdr_and_chunk_layout(name: str, colour: int) -> None:
    arr = IMAGES[name]
    data = encode_png(arr)
    assert data.startswith(SIGNATURE)
    assert ihdr(data) == dict(
        width=arr.shape[1], height=arr.shape[0], depth=8, colour=colour, compression=0, filter=0, interlace=0
    )
    kinds = [k for k, _ in chunks(data)]  # also checks every CRC
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and set(kinds[1:-1]) == {b"IDAT"}
    assert data.endswith(b"\x00\x00\x00\x00IEND\xae\x42\x60\x82")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == ("L" if colour == 0 else "RGB")
        assert im.size == (arr.shape[1], arr.shape[0])


def test_crc_checks_can_fail() -> None:
    """Pillow checks the IHDR CRC but not IDAT's or IEND's: hence chunks() checks all."""
    data = encode_png(IMAGES["grey 7x13 noise"])
    idat_end = 8 + 25 + 8 + struct.unpack(">I", data[33:37])[0]
    for offset, kind in ((8 + 8 + 13, "IHDR"), (idat_end, "IDAT"), (len(data) - 1, "IEND")):
        bad = bytearray(data)
        bad[offset] ^= 0xFF
        with pytest.raises(AssertionError, match=f"bad CRC in b'{kind}'"):
            chunks(bytes(bad))
    bad = bytearray(data)
    bad[8 + 8 + 13] ^= 0xFF
    with pytest.raises(OSError):
        pillow_decode(bytes(bad))


def test_split_into_several_idat_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png, "_IDAT_MAX", 100)
    arr = IMAGES["rgb noise"]
    data = assert_roundtrip(arr)
    idats = [p for k, p in chunks(data) if k == b"IDAT"]
    assert len(idats) > 10
    assert all(len(p) == 100 for p in idats[:-1]) and 0 < len(idats[-1]) <= 100
    np.testing.assert_array_equal(reference_decode(data)[0] if arr.size <= 4000 else pillow_decode(data), arr)


def test_stdlib_zlib_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A private copy of the module, loaded as if python-isal were not installed."""
    monkeypatch.setitem(sys.modules, "isal", None)
    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)
    spec = importlib.util.spec_from_file_location("_png_without_isal", png.__file__)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod._deflate is zlib.compress and mod._crc32 is zlib.crc32
    for name in ("grey ct-like disc", "rgb 7x13 noise"):
        arr = IMAGES[name]
        data = mod.encode_png(arr)
        np.testing.assert_array_equal(pillow_decode(data), arr)
        # same filtered bytes, only the deflate implementation differs
        assert zlib.decompress(b"".join(p for k, p in chunks(data) if k == b"IDAT")) == zlib.decompress(
            b"".join(p for k, p in chunks(encode_png(arr)) if k == b"IDAT")
        )


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 4), np.uint16),
        np.zeros((4, 4), np.int8),
        np.zeros((4, 4), np.int16),
        np.zeros((4, 4), np.float32),
        np.zeros((4, 4), bool),
        np.zeros((4, 4, 3), np.float64),
        np.zeros(16, np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 1), np.uint8),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((0, 4), np.uint8),
        np.zeros((4, 0), np.uint8),
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((4, 0, 3), np.uint8),
        np.array(7, np.uint8),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_bad_arrays_raise_value_error(arr: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_png(arr)


def test_not_an_array_raises_type_error() -> None:
    with pytest.raises(TypeError):
        encode_png([[0, 1], [2, 3]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"level": -1}, {"level": 4}, {"level": 9}, {"row_filter": "adaptive"}, {"row_filter": 3}]
)
def test_bad_options_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        encode_png(IMAGES["grey 7x13 noise"], **kwargs)
