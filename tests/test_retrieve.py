"""dicomsvc.retrieve's WADO-RS side: instances re-encoded in Explicit VR Little Endian (PS3.5
§A.2), frames cut from the file or decoded, and which syntaxes can be decoded."""

from pathlib import Path
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRLittleEndian

from dicomfiles import make_ct, sample_file, save
from dicomsvc import retrieve
from dicomsvc.errors import UnsupportedTransferSyntax
from dicomsvc.storage.blobs import BlobStore

FILES = [
    "CT_small.dcm",  # explicit little endian: copied as is
    "MR_small_implicit.dcm",  # re-encoded, pixel bytes copied
    "MR_small_bigendian.dcm",  # pixel data byte-swapped
    "image_dfl.dcm",  # deflated: the data set was in memory
    "MR_small_RLE.dcm",
    "emri_small_RLE.dcm",  # 10 frames
    "MR_small_jp2klossless.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",  # YBR_FULL_422 JPEG: decoded to RGB
    "SC_rgb_jpeg_gdcm.dcm",
]


@pytest.fixture
def blobs(config):
    store = BlobStore.of(config)  # encrypting under DICOMSVC_TEST_ENCRYPTION=1
    store.open()
    return store


def keep(blobs: BlobStore, source) -> str:
    key = f"aa/{source.name}"
    blobs.commit(blobs.write_temp(Path(source).read_bytes(), ".dcm"), key)  # as ingest places it
    return key


def pixels(ds: pydicom.Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


@pytest.mark.parametrize("name", FILES)
def test_write_explicit_le_keeps_every_element_and_pixel(config, blobs, name):
    original = pydicom.dcmread(sample_file(name))
    temp = retrieve.write_explicit_le(config, keep(blobs, sample_file(name)))
    assert temp.parent == blobs.tmp  # a temporary file the caller streams and removes
    copy = pydicom.dcmread(temp)
    assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not copy["PixelData"].is_undefined_length  # native, not encapsulated
    assert np.array_equal(pixels(copy), pixels(original))
    changed = {0x7FE00010, 0xFFFCFFFC, 0x00280004, 0x00280006}  # pixels; padding; RGB after decoding
    for elem in original:
        if elem.tag not in changed and elem.tag.element != 0:
            assert copy[elem.tag].value == elem.value, elem.tag
    if original.PhotometricInterpretation.startswith("YBR") and original.file_meta.TransferSyntaxUID.is_compressed:
        assert copy.PhotometricInterpretation == "RGB" and copy.PlanarConfiguration == 0


def test_write_explicit_le_elements_after_the_pixel_data(config, blobs, tmp_path):
    ds = make_ct()
    ds.add_new(0x7FE10010, "LO", "ACME")  # private creator above the pixel data
    ds.add_new(0x7FE11001, "OB", b"\x01\x02\x03\x04")
    ds.add_new(0xFFFCFFFC, "OB", bytes(8))  # Data Set Trailing Padding: left out
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=True)
    copy = pydicom.dcmread(retrieve.write_explicit_le(config, keep(blobs, path)))
    assert copy[0x7FE11001].value == b"\x01\x02\x03\x04" and copy[0x7FE10010].value == "ACME"
    assert 0xFFFCFFFC not in copy
    assert copy.PixelData == ds.PixelData


def test_write_explicit_le_refuses_undecodable_and_leaves_nothing(config, blobs, tmp_path):
    ds = pydicom.dcmread(sample_file("MR_small_RLE.dcm"))
    ds.PixelData = pydicom.encaps.encapsulate([b"\x01" + bytes(63) + b"junk"])
    key = keep(blobs, save(ds, tmp_path / "bad.dcm"))
    with pytest.raises(UnsupportedTransferSyntax):
        retrieve.write_explicit_le(config, key)
    assert list(blobs.tmp.iterdir()) == []


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_frames_cut_or_decoded(config, blobs, name):
    original = pydicom.dcmread(sample_file(name))
    key = keep(blobs, sample_file(name))
    expected = [np.ascontiguousarray(frame).astype("<i2" if frame.dtype.kind == "i" else "<u2").tobytes()
                for frame in pixels(original)]  # fmt: skip
    assert retrieve.decoded_frames(config, key, [9, 0, 4]) == [expected[9], expected[0], expected[4]]
    source = retrieve.frame_source(blobs.stored(key))
    assert source.frames == 10
    if original.file_meta.TransferSyntaxUID.is_compressed:
        assert not source.raw_native
        assert source.compressed(7) == get_frame(original.PixelData, 7, number_of_frames=10)
    else:
        assert source.raw_native and source.native(3) == expected[3]


def test_decodable():
    assert retrieve.decodable(ExplicitVRLittleEndian) and retrieve.decodable(None)
    assert retrieve.decodable("1.2.840.10008.1.2.4.90")  # JPEG 2000, with pylibjpeg-openjpeg
    assert not retrieve.decodable("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder
    assert not retrieve.decodable("1.2.3.4")


def test_a_one_bit_frame_is_packed(config, blobs, tmp_path):
    ds = make_ct(np.zeros((8, 12), dtype=np.uint8))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    bits = np.array([[1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0]] * 8, dtype=np.uint8)
    ds["PixelData"] = DataElement(0x7FE00010, "OB", np.packbits(bits.ravel(), bitorder="little").tobytes())
    for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        del ds[tag]
    key = keep(blobs, save(ds, tmp_path / "bits.dcm"))
    assert retrieve.decoded_frames(config, key, [0]) == [ds.PixelData]


def test_frame_sources_are_kept_parsed_but_not_deflated_ones(blobs):
    kept = blobs.stored(keep(blobs, sample_file("emri_small_RLE.dcm")))
    assert retrieve.frame_source(kept) is retrieve.frame_source(kept)
    deflated = blobs.stored(keep(blobs, sample_file("image_dfl.dcm")))  # its pixel data is in memory
    assert retrieve.frame_source(deflated) is not retrieve.frame_source(deflated)
    assert retrieve.frame_source(deflated).native(0) == pydicom.dcmread(sample_file("image_dfl.dcm")).PixelData
