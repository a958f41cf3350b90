"""Pixel data as .npy: the same array pydicom's pixel_array gives, streamed a frame at a time."""

import io
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npformat
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.sequence import Sequence

import dicomsvc.imaging.arrays as arrays
from dicomfiles import make_ct, sample_file, save
from dicomsvc.imaging.arrays import npy_header, npy_stream
from dicomsvc.errors import BadRequest, NoPixelData, UnsupportedTransferSyntax
from dicomsvc.dicom.parse import read

# One per transfer syntax / photometric interpretation / bit depth worth telling apart.
FILES = [
    "CT_small.dcm",  # explicit VR little endian, int16
    "MR_small_implicit.dcm",  # implicit VR
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_small_odd.dcm",  # RGB, odd size
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline colour, YBR_FULL_422
    "SC_ybr_full_422_uncompressed.dcm",  # native YBR
    "SC_rgb_rle_2frame.dcm",  # multi-frame colour
    "examples_ybr_color.dcm",  # 30-frame JPEG, YBR
    "rtdose.dcm",  # multi-frame 32-bit
    "rtdose_expb.dcm",  # multi-frame 32-bit, big endian
    "liver_1frame.dcm",  # 1-bit
    "image_dfl.dcm",  # deflated: pixel data held in memory
    "examples_palette.dcm",  # PALETTE COLOR: the indexes, as pixel_array gives them
]
MULTI_FRAME = ["SC_rgb_rle_2frame.dcm", "examples_ybr_color.dcm", "rtdose.dcm"]


def load(path: Path, frame: int | None = None, rescale: bool = False) -> tuple[np.ndarray, list[bytes], int]:
    total, chunks = npy_stream(path, read(path), frame=frame, rescale=rescale)
    chunks = list(chunks)
    assert all(isinstance(chunk, bytes) for chunk in chunks)
    return np.load(io.BytesIO(b"".join(chunks)), allow_pickle=False), chunks, total


def frames_of(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


@pytest.mark.parametrize("name", FILES)
def test_whole_array_is_pixel_array(name):
    path = sample_file(name)
    expected = dcmread(path).pixel_array
    arr, chunks, total = load(path)
    assert arr.shape == expected.shape
    assert arr.dtype == expected.dtype  # byte order included: big-endian files stay big-endian
    np.testing.assert_array_equal(arr, expected)
    assert total == sum(len(chunk) for chunk in chunks)


@pytest.mark.parametrize("name", MULTI_FRAME)
def test_one_frame_is_pixel_array_at_that_index(name):
    path = sample_file(name)
    count = frames_of(dcmread(path, stop_before_pixels=True))
    assert count > 1
    for frame in sorted({1, count // 2 + 1, count}):
        expected = pixel_array(path, index=frame - 1)
        arr, chunks, total = load(path, frame=frame)
        assert arr.shape == expected.shape  # no frames axis
        assert arr.dtype == expected.dtype
        np.testing.assert_array_equal(arr, expected)
        assert len(chunks) == 2  # header, the one frame
        assert total == sum(len(chunk) for chunk in chunks)


def test_frame_one_of_a_single_frame_file():
    path = sample_file("CT_small.dcm")
    arr, _, _ = load(path, frame=1)
    np.testing.assert_array_equal(arr, dcmread(path).pixel_array)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm"])
def test_rescale_is_the_modality_lut_as_float32(name):
    path = sample_file(name)
    ds = dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    arr, chunks, total = load(path, rescale=True)
    assert arr.dtype == np.float32
    assert arr.shape == expected.shape
    np.testing.assert_array_equal(arr, expected)
    assert total == sum(len(chunk) for chunk in chunks)


def test_rescale_changes_values_where_the_file_says_so():
    path = sample_file("CT_small.dcm")  # Rescale Intercept != 0
    ds = dcmread(path)
    assert float(ds.RescaleIntercept) != 0
    stored, _, _ = load(path)
    rescaled, _, _ = load(path, rescale=True)
    expected = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(rescaled, expected.astype(np.float32))


def test_rescale_of_one_frame():
    path = sample_file("rtdose.dcm")
    ds = dcmread(path)
    expected = apply_modality_lut(pixel_array(path, index=2), ds).astype(np.float32)
    arr, _, _ = load(path, frame=3, rescale=True)
    np.testing.assert_array_equal(arr, expected)


def test_rescale_with_a_modality_lut_sequence(tmp_path):
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, size=(8, 10), dtype=np.uint16)
    ds = make_ct(pixels, window=None)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PixelRepresentation = 0
    ds.BitsStored = 8
    ds.HighBit = 7
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    lut.ModalityLUTType = "HU"
    lut.add_new(0x00283006, "US", [int(v) for v in rng.integers(0, 4096, size=256)])  # LUT Data
    ds.ModalityLUTSequence = Sequence([lut])
    path = save(ds, tmp_path / "mlut.dcm")
    reread = dcmread(path)
    expected = apply_modality_lut(reread.pixel_array, reread).astype(np.float32)
    assert not np.array_equal(expected, reread.pixel_array.astype(np.float32))
    arr, _, _ = load(path, rescale=True)
    np.testing.assert_array_equal(arr, expected)


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "rtdose.dcm"])
def test_streams_one_chunk_per_frame_decoding_lazily(name, monkeypatch):
    path = sample_file(name)
    ds = dcmread(path, stop_before_pixels=True)
    count = frames_of(ds)
    calls: list[int] = []
    decode = arrays.decode_frame

    def counting(path, parsed, index):
        calls.append(index)
        return decode(path, parsed, index)

    monkeypatch.setattr(arrays, "decode_frame", counting)
    total, chunks = npy_stream(path, read(path))
    assert calls == [0]  # only what the dtype and shape need, before streaming
    header = next(chunks)
    sizes = []
    for i, chunk in enumerate(chunks, start=1):
        assert len(calls) == i  # one frame decoded per chunk, never ahead
        sizes.append(len(chunk))
    assert calls == list(range(count))
    frame_bytes = dcmread(path).pixel_array[0].nbytes
    assert sizes == [frame_bytes] * count
    assert total == len(header) + sum(sizes)


def test_header_is_npy_1_0_aligned():
    path = sample_file("CT_small.dcm")
    _, chunks, _ = load(path)
    fp = io.BytesIO(chunks[0])
    assert npformat.read_magic(fp) == (1, 0)
    shape, fortran, dtype = npformat.read_array_header_1_0(fp)
    expected = dcmread(path).pixel_array
    assert (shape, fortran, dtype) == (expected.shape, False, expected.dtype)
    assert fp.tell() == len(chunks[0])
    assert len(chunks[0]) % 64 == 0


def test_header_needing_more_than_64_kib_is_npy_2_0():
    shape = (1,) * 30000  # a header no 16-bit length can hold
    header = npy_header(np.dtype("<u2"), shape)
    fp = io.BytesIO(header)
    assert npformat.read_magic(fp) == (2, 0)
    assert npformat.read_array_header_2_0(fp, max_header_size=len(header)) == (shape, False, np.dtype("<u2"))
    assert len(header) % 64 == 0
    assert npformat.read_magic(io.BytesIO(npy_header(np.dtype("<u2"), (3, 4)))) == (1, 0)


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtdose.dcm"])
def test_frame_out_of_range(name):
    path = sample_file(name)
    parsed = read(path)
    count = frames_of(parsed.ds)
    for frame in (0, -1, count + 1):
        with pytest.raises(BadRequest) as err:
            npy_stream(path, parsed, frame=frame)
        assert str(count) in err.value.detail


def test_no_pixel_data():
    path = sample_file("rtplan.dcm")
    with pytest.raises(NoPixelData):
        npy_stream(path, read(path))


def test_undecodable_raises_before_streaming():
    path = sample_file("JPEG-lossy.dcm")  # pylibjpeg rejects this stream
    with pytest.raises(UnsupportedTransferSyntax):
        npy_stream(path, read(path))
