"""Reading and validating: what counts as a DICOM instance, and where its pixels are."""

import hashlib
import io
import os
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import xxhash
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from dicomfiles import counting_reads, make_ct, sample_file, save
from dicomsvc.errors import InvalidDicom, TooLarge, UnsupportedTransferSyntax
from dicomsvc.dicom.parse import is_legacy_hash, pixel_hash, read
from dicomsvc.dicom.tags import flatten
from dicomsvc.imaging.decode import decode_frame

pytestmark = pytest.mark.same_in_scale_run("parsing is a pure function of the file")


def test_native_pixel_location_and_hash():
    path = sample_file("CT_small.dcm")
    parsed = read(path)
    ds = pydicom.dcmread(path)
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert "PixelData" not in parsed.ds  # never read into memory
    pixel = parsed.pixel
    assert (pixel.vr, pixel.length, pixel.encapsulated) == ("OW", len(ds.PixelData), False)
    raw = path.read_bytes()
    assert raw[pixel.offset : pixel.offset + pixel.length] == ds.PixelData
    assert pixel_hash(path, parsed) == "xxh3:" + xxhash.xxh3_128_hexdigest(ds.PixelData)
    assert pixel_hash(path, parsed, legacy=True) == hashlib.sha256(ds.PixelData).hexdigest()  # older rows'


def test_encapsulated_length_runs_to_the_delimiter(tmp_path):
    frames = [b"\x01" * 10, b"\x02" * 20]
    ds = make_ct(np.zeros((4, 4), np.int16))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "enc.dcm")
    parsed = read(path)
    assert parsed.pixel.encapsulated
    assert parsed.pixel.length == len(ds.PixelData)  # every item; not the delimiter pydicom adds
    raw = path.read_bytes()
    value = raw[parsed.pixel.offset : parsed.pixel.offset + parsed.pixel.length]
    assert pixel_hash(path, parsed) == "xxh3:" + xxhash.xxh3_128_hexdigest(value)
    assert pixel_hash(path, parsed, legacy=True) == hashlib.sha256(value).hexdigest()


def test_hash_depends_on_pixels_only(tmp_path):
    a = make_ct(np.zeros((4, 4), np.int16))
    b = make_ct(np.zeros((4, 4), np.int16), StudyDescription="other")
    c = make_ct(np.ones((4, 4), np.int16))
    paths = [save(d, tmp_path / f"{n}.dcm") for n, d in zip("abc", (a, b, c))]
    ha, hb, hc = (pixel_hash(p, read(p)) for p in paths)
    assert ha == hb != hc


@pytest.mark.parametrize(
    "name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "SC_rgb_jpeg.dcm", "JPEG2000.dcm"]
)
def test_encodings_are_read(name):
    parsed = read(sample_file(name))
    assert parsed.pixel is not None and parsed.pixel.length > 0
    assert parsed.sop_instance_uid == pydicom.dcmread(sample_file(name)).SOPInstanceUID


def test_deflated_file_is_held_in_memory():
    parsed = read(sample_file("image_dfl.dcm"))
    assert parsed.pixel.offset is None and "PixelData" in parsed.ds
    pixels = pydicom.dcmread(sample_file("image_dfl.dcm")).PixelData
    assert pixel_hash(sample_file("image_dfl.dcm"), parsed) == "xxh3:" + xxhash.xxh3_128_hexdigest(pixels)
    assert pixel_hash(sample_file("image_dfl.dcm"), parsed, legacy=True) == hashlib.sha256(pixels).hexdigest()


def test_which_stored_hashes_are_legacy():
    assert is_legacy_hash(hashlib.sha256(b"pixels").hexdigest())
    assert not is_legacy_hash("xxh3:" + xxhash.xxh3_128_hexdigest(b"pixels"))
    assert not is_legacy_hash("")  # no pixel data, then as now


def test_files_without_pixel_data():
    for name in ("rtplan.dcm", "test-SR.dcm", "ExplVR_LitEndNoMeta.dcm"):
        parsed = read(sample_file(name))
        assert parsed.pixel is None and pixel_hash(sample_file(name), parsed) == ""


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content",
    [b"", b"abc", os.urandom(10_000), png_bytes(), b"%PDF-1.4\n" + b"x" * 500, b"\x00" * 132],
    ids=["empty", "short", "random", "png", "pdf", "zeros"],
)
def test_non_dicom_is_refused(tmp_path, content):
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(InvalidDicom):
        read(path)


def test_truncated_header_and_missing_sop_uid_are_refused(tmp_path):
    raw = sample_file("CT_small.dcm").read_bytes()
    for cut in (140, 200, 300):
        (tmp_path / "cut").write_bytes(raw[:cut])
        with pytest.raises(InvalidDicom):
            read(tmp_path / "cut")
    ds = make_ct()
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(tmp_path / "nouid.dcm")
    with pytest.raises(InvalidDicom, match="SOP Instance UID"):
        read(tmp_path / "nouid.dcm")


def test_truncated_pixel_data_still_parses():
    parsed = read(sample_file("MR_truncated.dcm"))
    assert parsed.pixel is not None
    assert parsed.pixel.offset + parsed.pixel.length > sample_file("MR_truncated.dcm").stat().st_size


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm"])
def test_files_cut_inside_the_dataset_are_refused(tmp_path, name):
    raw = sample_file(name).read_bytes()
    for cut in (len(raw) // 2, len(raw) - 3, len(raw) - 1):
        (tmp_path / "cut").write_bytes(raw[:cut])
        with pytest.raises(InvalidDicom, match="truncated"):
            read(tmp_path / "cut")
    (tmp_path / "whole").write_bytes(raw)
    assert read(tmp_path / "whole").pixel is None


def test_elements_after_the_pixel_data_are_read(monkeypatch):
    # CT_small.dcm ends with (FFFC,FFFC) Data Set Trailing Padding after its Pixel Data;
    # dcmread(stop_before_pixels=True) never gets there, so read() must go on past the value.
    path = sample_file("CT_small.dcm")
    full = pydicom.dcmread(path)
    reads = counting_reads(monkeypatch)
    parsed = read(path)
    assert "PixelData" not in parsed.ds  # still not read into memory
    assert max(reads) < parsed.pixel.length and -1 not in reads
    padding = parsed.ds[0xFFFCFFFC]
    assert padding.VR == "OB" and padding.value == full[0xFFFCFFFC].value
    assert set(parsed.ds.keys()) == set(full.keys()) - {0x7FE00010}


@pytest.mark.parametrize("encapsulated", [False, True], ids=["native", "encapsulated"])
def test_elements_after_large_pixel_data_skip_the_value(tmp_path, monkeypatch, encapsulated):
    pixels = np.arange(1024 * 1024, dtype=np.int16).reshape(1024, 1024)
    ds = make_ct(pixels)
    if encapsulated:  # the delimiter after the items is not an element
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.PixelData = encapsulate([b"\x01" * 600_000, b"\x02" * 600_000])
        ds["PixelData"].VR = "OB"
    ds.add_new(0x7FE10010, "LO", "AFTER PIXELS")
    ds.add_new(0x7FE11001, "OB", b"\x00\x01\x02\x03")
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 10)
    path = save(ds, tmp_path / "after.dcm")
    reads = counting_reads(monkeypatch)
    parsed = read(path)
    assert max(reads) < 64 * 1024 and -1 not in reads  # the 2 MB (or 1.2 MB) value was skipped
    assert "PixelData" not in parsed.ds and parsed.pixel.length == len(ds.PixelData)
    assert parsed.ds[0x7FE10010].value == "AFTER PIXELS"
    assert parsed.ds[0x7FE11001].value == b"\x00\x01\x02\x03"
    assert parsed.ds[0xFFFCFFFC].value == b"\x00" * 10


def test_file_cut_inside_an_element_after_the_pixel_data_is_refused(tmp_path):
    raw = sample_file("CT_small.dcm").read_bytes()  # ... Pixel Data, then 138 bytes of (FFFC,FFFC)
    (tmp_path / "cut").write_bytes(raw[:-20])
    with pytest.raises(InvalidDicom, match="truncated"):
        read(tmp_path / "cut")


# SOP Instance UID: what identifies an instance, and what only earns a warning --------

UID_WARNING = "SOP Instance UID (0008,0018) is not a valid UID (PS3.5 §9.1)"


def test_non_uid_sop_instance_uid_is_read_with_a_warning():
    # pydicom-data's bad_sequence.dcm: a 64-hex-digit hash, as some anonymizers write; dcmtk
    # renders it and Orthanc stores it
    path = sample_file("bad_sequence.dcm")
    parsed = read(path)
    assert parsed.sop_instance_uid == str(pydicom.dcmread(path).SOPInstanceUID)
    assert len(parsed.sop_instance_uid) == 64 and not parsed.sop_instance_uid.replace(".", "").isdigit()
    assert parsed.warnings == [UID_WARNING]  # names the element, never quotes the value


def test_valid_uid_has_no_warning():
    assert read(sample_file("CT_small.dcm")).warnings == []


def with_uid(tmp_path, monkeypatch, value: str):
    """A file whose (0008,0018) holds ``value``, written without pydicom's validation."""
    from pydicom import config

    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    ds = make_ct(np.zeros((4, 4), np.int16))
    ds["SOPInstanceUID"].value = value
    return save(ds, tmp_path / "uid.dcm")


@pytest.mark.parametrize(
    "value",
    ["01.2.3", "1.2..3", "1.2.3.", "abc-123", "1.2.3 4", "f" * 64],
    ids=["leading-zero", "empty-component", "trailing-dot", "letters", "space", "hex-64"],
)
def test_printable_non_uids_up_to_64_chars_are_accepted_with_a_warning(tmp_path, monkeypatch, value):
    parsed = read(with_uid(tmp_path, monkeypatch, value))
    assert parsed.sop_instance_uid == value and parsed.warnings == [UID_WARNING]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1." + "2" * 63, "longer than 64"),
        ("1.2.3\x01", "non-printable"),
        ("1.2.3.\u00e9", "non-ASCII"),
        ("1.2\\3.4", "single text value"),
        ("\x00", "no SOP Instance UID"),
    ],
    ids=["65-chars", "control", "non-ascii", "two-values", "nul"],
)
def test_values_that_cannot_identify_an_instance_are_refused(tmp_path, monkeypatch, value, reason):
    with pytest.raises(InvalidDicom, match=reason) as caught:
        read(with_uid(tmp_path, monkeypatch, value))
    assert "1." not in str(caught.value)  # the value is never quoted


# Hostile and damaged input (issue 9) --------------------------------------------------------


def deflated_zeros(tmp_path, side: int):
    """A CT in Deflated Explicit VR Little Endian (PS3.5 §A.5): side x side int16 zeros,
    which deflate about a thousand times."""
    ds = make_ct(np.zeros((side, side), np.int16), window=None)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return save(ds, tmp_path / "deflated.dcm")


def test_deflated_data_set_inflates_as_a_stream_capped_and_never_into_memory(tmp_path):
    """16 MiB of pixel data in a ~16 kB file: refused past the cap (TooLarge), and read
    without holding the inflated data set in memory (it was held whole, twice)."""
    path = deflated_zeros(tmp_path, 2048)
    assert path.stat().st_size < 100_000
    with pytest.raises(TooLarge, match="inflates to more than"):
        read(path, max_inflated=1 << 20)
    tracemalloc.start()
    try:
        parsed = read(path, max_inflated=32 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # what pydicom needed: ~56 MiB
    assert parsed.pixel.offset is None and parsed.pixel.length == 2048 * 2048 * 2
    assert parsed.pixel_problem is None and parsed.warnings == []
    assert pixel_hash(path, parsed) == "xxh3:" + xxhash.xxh3_128_hexdigest(bytes(2048 * 2048 * 2))
    frame = decode_frame(path, parsed, 0)
    assert frame.shape == (2048, 2048) and not frame.any()


def test_a_deflated_data_set_the_worker_cannot_map_is_too_large(tmp_path, monkeypatch):
    """Under RLIMIT_AS (DICOMSVC_WORKER_MEMORY) mapping the inflated file fails with ENOMEM."""
    import errno
    import mmap

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    path = deflated_zeros(tmp_path, 64)
    monkeypatch.setattr(mmap, "mmap", no_room)
    with pytest.raises(TooLarge, match="more than this worker can map"):
        read(path)


def test_deflated_file_reads_as_pydicom_reads_it():
    path = sample_file("image_dfl.dcm")
    parsed, ds = read(path), pydicom.dcmread(path)
    assert sorted(parsed.ds.keys()) == sorted(ds.keys())
    assert bytes(parsed.ds.PixelData) == ds.PixelData
    assert np.array_equal(decode_frame(path, parsed, 0), ds.pixel_array)


def test_a_deflated_file_cut_short_is_read_up_to_the_cut(tmp_path):
    path = deflated_zeros(tmp_path, 256)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 40])  # inside the deflate stream, after the pixel data started
    parsed = read(path)
    assert parsed.warnings == ["the deflated data set (PS3.5 §A.5) ends before its deflate stream does"]
    assert parsed.pixel_problem.startswith("truncated file: the Pixel Data (7FE0,0010) value is 131072 bytes long")
    path.write_bytes(raw[:-40].replace(raw[400:440], bytes(40)))  # a corrupt stream
    with pytest.raises(InvalidDicom):
        read(path)


def jpeg_cut(tmp_path, keep: int):
    """pydicom's JPEG baseline file with its encapsulated pixel data cut ``keep`` bytes from
    the end of the value (negative: inside the last fragment; 0: just the delimiter gone)."""
    path = sample_file("JPEG-lossy.dcm")
    parsed = read(path)
    end = parsed.pixel.offset + parsed.pixel.length
    assert len(path.read_bytes()) == end + 8  # nothing after the Sequence Delimitation Item
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[: end + keep])
    return cut


def test_encapsulated_pixel_data_cut_short_is_a_pixel_problem(tmp_path):
    inside = read(jpeg_cut(tmp_path, -100))
    assert inside.pixel_problem == (
        "truncated file: an item of the encapsulated Pixel Data (7FE0,0010) runs past the end of the file (PS3.5 §A.4)"
    )
    no_delimiter = read(jpeg_cut(tmp_path, 0))
    assert "no Sequence Delimitation Item (FFFE,E0DD)" in no_delimiter.pixel_problem
    with pytest.raises(UnsupportedTransferSyntax, match="truncated file"):  # never decoded
        decode_frame(tmp_path / "cut.dcm", no_delimiter, 0)


def test_native_pixel_data_shorter_than_the_image_or_cut_short_is_a_pixel_problem(tmp_path):
    short = make_ct(np.zeros((16, 16), np.int16))
    short.PixelData = short.PixelData[:100]
    assert read(save(short, tmp_path / "short.dcm")).pixel_problem == (
        "the Pixel Data (7FE0,0010) value holds 100 bytes; Rows × Columns × Samples per Pixel × "
        "Bits Allocated / 8 × Number of Frames make 512 (PS3.5 §8.1.1)"
    )
    frames = make_ct(np.zeros((16, 16), np.int16), NumberOfFrames=3)  # one frame's bytes for three
    assert "make 1536" in read(save(frames, tmp_path / "frames.dcm")).pixel_problem
    raw = save(make_ct(np.zeros((16, 16), np.int16)), tmp_path / "whole.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[:-10])
    assert read(tmp_path / "cut.dcm").pixel_problem == (
        "truncated file: the Pixel Data (7FE0,0010) value is 512 bytes long and the file holds 502 of them"
    )
    ybr = make_ct(np.zeros((4, 6, 3), np.uint8), photometric="YBR_FULL_422", window=None)
    ybr.SamplesPerPixel, ybr.BitsAllocated, ybr.BitsStored, ybr.HighBit = 3, 8, 8, 7
    ybr.PlanarConfiguration, ybr.PixelRepresentation = 0, 0
    ybr.PixelData = bytes(4 * 6 * 2)  # PS3.3 C.7.6.3.1.2: two bytes a pixel
    assert read(save(ybr, tmp_path / "ybr.dcm")).pixel_problem is None


def test_fewer_fragments_than_frames_is_a_pixel_problem(tmp_path):
    ds = make_ct(np.zeros((4, 4), np.int16), NumberOfFrames=3)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 10])
    ds["PixelData"].VR = "OB"
    parsed = read(save(ds, tmp_path / "rle.dcm"))
    assert parsed.pixel_problem == (
        "the encapsulated Pixel Data (7FE0,0010) has 1 fragments for 3 frames (PS3.5 §A.4: each frame takes one or more)"
    )


def test_no_bundled_file_but_the_truncated_ones_has_a_pixel_problem():
    folders = {sample_file("CT_small.dcm").parent, sample_file("OBXXXX1A.dcm").parent}
    flagged = {}
    for path in sorted(p for folder in folders for p in folder.iterdir() if p.suffix == ".dcm"):
        try:
            parsed = read(path)
        except InvalidDicom:
            continue
        if parsed.pixel_problem:
            flagged[path.name] = parsed.pixel_problem
    assert sorted(flagged) == ["MR_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"], flagged


def with_raw(tmp_path, ds, edit):
    """``ds`` saved, then its bytes edited."""
    raw = save(ds, tmp_path / "in.dcm").read_bytes()
    path = tmp_path / "edited.dcm"
    path.write_bytes(edit(raw))
    return path


def test_unknown_vrs_are_read_as_un_and_stray_delimiters_dropped(tmp_path):
    ds = make_ct(np.zeros((4, 4), np.int16))

    def zz(raw):  # a zero-length (0008,0050) and a private (0009,0010) with a value, both VR ZZ
        at = raw.index(b"\x08\x00\x60\x00CS")  # before (0008,0060) Modality
        return raw[:at] + b"\x08\x00\x50\x00ZZ\x00\x00" + raw[at:]

    parsed = read(with_raw(tmp_path, ds, zz))
    assert parsed.warnings == ["(0008,0050) has no valid VR (PS3.5 §6.2): read as UN"]
    rows = {r.tag: r for r in flatten(parsed.ds, parsed.pixel)}
    assert (rows[0x00080050].vr, rows[0x00080050].value) == ("SH", "")  # UN read with the dictionary's VR

    def uh(raw):  # (0002,0003) Media Storage SOP Instance UID with VR UH
        at = raw.index(b"\x02\x00\x03\x00UI")
        return raw[:at + 4] + b"UH" + raw[at + 6 :]

    no_uid = make_ct(np.zeros((4, 4), np.int16))
    del no_uid.SOPInstanceUID  # the identity comes from the file meta
    parsed = read(with_raw(tmp_path, no_uid, uh))
    assert parsed.sop_instance_uid == no_uid.file_meta.MediaStorageSOPInstanceUID
    assert parsed.warnings == ["(0002,0003) has no valid VR (PS3.5 §6.2): read as UN"]
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD) as the last element
    without_pixels = make_ct(np.zeros((4, 4), np.int16))
    del without_pixels.PixelData
    for dataset in (make_ct(np.zeros((4, 4), np.int16)), without_pixels):
        parsed = read(with_raw(tmp_path, dataset, lambda raw: raw + delimiter))
        assert parsed.warnings == [
            "a stray item or delimitation tag (FFFE,E0DD) outside any sequence was ignored (PS3.5 §7.5)"
        ]
        assert 0xFFFEE0DD not in parsed.ds


def test_a_full_disk_while_inflating_is_the_disks_fault_not_the_files(tmp_path, monkeypatch):
    """ENOSPC writing the inflated data set goes up as it is (ingest answers 507), not as 422."""
    import errno

    from dicomfiles import temporary_files_on_a_full_disk

    path = deflated_zeros(tmp_path, 64)
    temporary_files_on_a_full_disk(monkeypatch)
    with pytest.raises(OSError) as caught:
        read(path)
    assert caught.value.errno == errno.ENOSPC


def test_the_reader_keeps_the_position_itself(tmp_path):
    """pydicom asks tell() once or twice an element; a buffered file answers with an lseek
    system call, so the wrapper dcmread reads through counts the position itself."""
    from dicomsvc.dicom import parse

    path = save(make_ct(), tmp_path / "ct.dcm")
    data = path.read_bytes()

    class NoTell(io.BufferedReader):
        def tell(self):  # only the wrapper's construction may ask
            if self.asked:
                raise AssertionError("tell() on the file")
            self.asked = True
            return super().tell()

    with NoTell(io.FileIO(path, "rb")) as fp:
        fp.asked = False
        wrapped = parse._NoSlurp(fp)
        assert wrapped.read(132)[128:] == b"DICM" and wrapped.tell() == 132
        assert wrapped.seek(10, os.SEEK_CUR) == 142 == wrapped.tell()
        assert wrapped.read(4) == data[142:146] and wrapped.tell() == 146
        wrapped.seek(0, os.SEEK_END)
        assert wrapped.tell() == len(data) and wrapped.read(4) == b"" and wrapped.tell() == len(data)
        with pytest.raises(parse._Slurp):
            wrapped.read()
    parsed = read(path)
    assert parsed.pixel is not None and parsed.pixel.offset + parsed.pixel.length == len(data)


# -- the fast element reader (fastread) against pydicom's ---------------------------------------


def _every_bundled_file():
    """Every file pydicom ships (test files, charset files) and pydicom-data holds (a test
    extra, installed in the venv: never downloaded), whether ``read`` takes it or not."""
    import data_store
    from pydicom.data import get_charset_files, get_testdata_files

    store = Path(data_store.__file__).parent / "data"
    paths = {Path(p) for p in get_testdata_files() + get_charset_files()} | set(store.rglob("*"))
    site = store.parent.parent
    for path in sorted(p for p in paths if p.is_file()):
        yield pytest.param(path, id=str(path.relative_to(site)) if path.is_relative_to(site) else path.name)


EVERY_FILE = list(_every_bundled_file())
DATASET_STATE = ("_read_implicit", "_read_little", "_read_charset", "_parent_encoding", "is_undefined_length_sequence_item")
ITEM_STATE = ("seq_item_tell", "file_tell")
FILE_STATE = ("preamble", "filename", "timestamp", "fileobj_type", "_is_implicit_VR", "_is_little_endian")


def _same_dataset(a, b, where="") -> None:
    """Element by element, as read (raw elements stay raw): the same tags in the same order,
    each the same kind of element with the same fields; sequences item by item."""
    for name in DATASET_STATE:
        assert getattr(a, name, None) == getattr(b, name, None), (where, name)
    assert list(a._dict) == list(b._dict), where
    for tag in a._dict:
        x, y = a._dict[tag], b._dict[tag]
        here = f"{where}/{tag:08X}"
        assert type(x) is type(y), here
        if isinstance(x, pydicom.dataelem.RawDataElement):
            assert tuple(x) == tuple(y), here  # tag, VR, length, value, value_tell, implicit, little...
            assert type(x.tag) is type(y.tag) and type(x.VR) is type(y.VR), here
            continue
        fields = ("tag", "VR", "file_tell", "is_undefined_length", "private_creator")
        assert [getattr(x, f) for f in fields] == [getattr(y, f) for f in fields], here
        if x.VR != "SQ":
            assert x.value == y.value, here
            continue
        assert len(x.value) == len(y.value) and x.value.is_undefined_length == y.value.is_undefined_length, here
        for i, (p, q) in enumerate(zip(x.value, y.value)):
            for name in ITEM_STATE:
                assert getattr(p, name, None) == getattr(q, name, None), (here, i, name)
            _same_dataset(p, q, f"{here}[{i}]")


def _read_both(path, monkeypatch):
    from dicomsvc.dicom import parse

    results = []
    for fast in (True, False):
        monkeypatch.setattr(parse, "FAST", fast)
        try:
            results.append(read(path))
        except Exception as exc:  # refused the same way, or not
            results.append((type(exc), str(exc)))
    return results


@pytest.mark.parametrize("first_read", ["first-read", "one-byte-first-read"])
@pytest.mark.parametrize("path", EVERY_FILE)
def test_the_fast_reader_builds_the_data_set_pydicom_builds(path, first_read, monkeypatch):
    """Also with a first read of one byte, so the header is read over and over, growing: each
    cut (in the file meta, in an element, a sequence, an item) is then met once."""
    from dicomsvc.dicom import fastread

    if first_read == "one-byte-first-read":
        monkeypatch.setattr(fastread, "FIRST_READ", 1)
    fastread.COUNTS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about some of them, both ways
        fast, slow = _read_both(path, monkeypatch)
    assert not [k for k in fastread.COUNTS if k.startswith("error")], fastread.COUNTS
    if isinstance(slow, tuple) or isinstance(fast, tuple):
        assert fast == slow
        return
    assert (fast.sop_instance_uid, fast.pixel, fast.warnings, fast.pixel_problem, fast.transfer_syntax) == (
        slow.sop_instance_uid, slow.pixel, slow.warnings, slow.pixel_problem, slow.transfer_syntax)  # fmt: skip
    for name in FILE_STATE:
        assert getattr(fast.ds, name, None) == getattr(slow.ds, name, None), name
    assert fast.ds.original_encoding == slow.ds.original_encoding
    _same_dataset(fast.ds.file_meta, slow.ds.file_meta, "meta")
    _same_dataset(fast.ds, slow.ds)


@pytest.mark.parametrize("path", EVERY_FILE)
def test_the_image_numbers_are_the_elements_pydicom_converts(path, monkeypatch):
    """Rows, Columns... converted from their bytes at reading (``_convert_image_numbers``) are
    the DataElements pydicom's own conversion makes of the same raw elements: VR, value and
    its type, value_tell, lengths; whatever it leaves raw, pydicom converts when used."""
    from dicomsvc.dicom import parse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about some of them, both ways
        try:
            ours = read(path)
        except Exception:
            pytest.skip("not read")
        monkeypatch.setattr(parse, "_convert_image_numbers", lambda ds: None)
        plain = read(path)
        for tag in parse.IMAGE_NUMBERS:
            mine = ours.ds.get_item(tag, keep_deferred=True)
            if type(mine) is not pydicom.dataelem.DataElement:
                continue
            theirs = plain.ds[tag]  # pydicom's conversion (read() may have made it already)
            fields = ("tag", "VR", "value", "file_tell", "is_undefined_length", "private_creator", "validation_mode")
            assert [getattr(mine, f) for f in fields] == [getattr(theirs, f) for f in fields], f"{tag:08X}"
            assert type(mine.value) is type(theirs.value) and type(mine.tag) is type(theirs.tag), f"{tag:08X}"


def _nested_sequences(undefined: bool) -> pydicom.Dataset:
    """A CT whose sequences hold what pydicom reads with care: empty items (in Explicit VR,
    pydicom reads an empty item as Implicit VR: the bytes where it starts are no VR), an
    item with its own (0008,0005) Specific Character Set whose nested sequence's items
    inherit it, a private sequence, and an Implicit VR undefined-length sequence whose tag
    the dictionary does not know."""
    from pydicom.sequence import Sequence

    def item(**elements):
        ds = pydicom.Dataset()
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
        ds.is_undefined_length_sequence_item = undefined
        return ds

    def sequence(items):
        return Sequence(items)

    def lengths(dataset):  # the writer follows each element's is_undefined_length
        for elem in dataset:
            if elem.VR == "SQ":
                elem.is_undefined_length = undefined
                for child in elem.value:
                    lengths(child)

    inner = sequence([item(CodeValue="T-D3000", CodeMeaning="Chest"), item()])
    outer = item(SpecificCharacterSet="ISO_IR 192", PatientName="Yamada^Tarou", AnatomicRegionSequence=inner)
    ds = make_ct(np.zeros((4, 4), np.int16), SpecificCharacterSet="ISO_IR 100")
    ds.ReferencedStudySequence = sequence([item(), item(ReferencedSOPInstanceUID="1.2.3"), item()])
    ds.ProcedureCodeSequence = sequence([outer])
    ds.ReferencedImageSequence = sequence([])
    block = ds.private_block(0x0029, "DICOMSVC TEST", create=True)
    block.add_new(0x01, "SQ", sequence([item(StudyDescription="private")]))
    lengths(ds)
    return ds


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined-lengths", "defined-lengths"])
@pytest.mark.parametrize("syntax", [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
def test_the_fast_reader_builds_nested_sequences_as_pydicom_does(tmp_path, monkeypatch, syntax, undefined):
    from dicomsvc.dicom import fastread

    ds = _nested_sequences(undefined)
    ds.file_meta.TransferSyntaxUID = syntax
    path = save(ds, tmp_path / "nested.dcm")
    fastread.COUNTS.clear()
    fast, slow = _read_both(path, monkeypatch)
    assert fastread.COUNTS == {"fast": 1}
    _same_dataset(fast.ds, slow.ds)
    if undefined:  # the empty items, and the nested items' inherited character set, as pydicom has them
        items = fast.ds._dict[0x00081110].value
        assert [i.original_encoding[0] for i in items] == [True, syntax.is_implicit_VR, True]
        nested = fast.ds.ProcedureCodeSequence[0].AnatomicRegionSequence
        assert [i._parent_encoding for i in nested] == [["UTF8"]] * 2
    assert fast.ds.ProcedureCodeSequence[0].AnatomicRegionSequence[0].CodeMeaning == "Chest"


def test_the_bench_corpus_takes_the_fast_reader(tmp_path, monkeypatch):
    """bench/corpus.py's synthetic CT (what bench/ingest_stages.py times) is read by fastread,
    into the data set pydicom builds; a big endian file is left to pydicom."""
    import sys

    from dicomsvc.dicom import fastread, parse

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        import corpus
    finally:
        sys.path.pop(0)
    path = corpus.make(tmp_path, 1, 1234).instances[0].path
    fastread.COUNTS.clear()
    metas = []  # the file meta read by fastread, not by pydicom's _read_file_meta_info
    monkeypatch.setattr(fastread, "_pydicom_file_meta", lambda src: metas.append(src))
    fast, slow = _read_both(path, monkeypatch)
    assert fastread.COUNTS == {"fast": 1} and len(fast.ds) > 100 and metas == []
    _same_dataset(fast.ds, slow.ds)
    # Bits Stored and Pixel Representation converted from their bytes (nothing in read() asks pydicom)
    assert all(type(fast.ds.get_item(tag)) is pydicom.dataelem.DataElement for tag in (0x00280101, 0x00280103))
    _same_dataset(fast.ds.file_meta, slow.ds.file_meta, "meta")
    monkeypatch.setattr(parse, "FAST", True)
    fastread.COUNTS.clear()
    read(sample_file("MR_small_bigendian.dcm"))
    assert fastread.COUNTS == {"pydicom: a big endian, deflated or private transfer syntax": 1}
