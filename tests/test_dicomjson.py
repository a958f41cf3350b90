"""The DICOM JSON model: round trips through pydicom's own reader, bulk data, value types."""

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomfiles import make_ct, sample_file, save
from dicomsvc.dicom.dicomjson import bulk_stream, bulk_value, to_dicom_json
from dicomsvc.errors import NotFound
from dicomsvc.dicom.parse import Parsed, read

PREFIX = "https://svc.test/dicom/ID/bulk/"
KEY_RE = re.compile(r"^[0-9A-F]{8}$")
INT_VRS = {"IS", "US", "SS", "UL", "SL", "UV", "SV"}
FLOAT_VRS = {"DS", "FL", "FD"}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}

FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",  # binary values in big-endian byte order
    "rtplan.dcm",  # nested sequences, no pixel data
    "chrH31.dcm",  # Japanese PN: alphabetic, ideographic, phonetic groups
    "chrX1.dcm",  # UTF-8 PN with an ideographic group
    "priv_SQ.dcm",  # private sequence
    "JPEG2000.dcm",  # encapsulated pixel data
    "image_dfl.dcm",  # deflated: pixel data held in the dataset
    "examples_palette.dcm",  # palette LUT data: large OW values
    "ExplVR_BigEnd.dcm",  # big endian, with group lengths
    "chrJapMulti.dcm",  # several character sets (code extensions), group lengths
]


def bulk_uri(path: str) -> str:
    return PREFIX + path


def handler(path: Path, parsed: Parsed):
    """What a client does with a BulkDataURI: fetch it (here: straight from bulk_value)."""

    def fetch(tag: str, vr: str, uri: str) -> bytes:
        assert uri.startswith(PREFIX)
        return bulk_value(path, parsed, uri.removeprefix(PREFIX))

    return fetch


def left_out(tag: int) -> bool:
    return tag & 0xFFFF == 0 or tag == 0xFFFCFFFC  # group lengths, trailing padding


def empty(value) -> bool:
    return value is None or isinstance(value, str) and value == ""


def as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def same_value(a, b) -> bool:
    if empty(a) or empty(b):  # an empty value among several: "" read from a file, None from JSON's null
        return empty(a) and empty(b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (list, tuple)) or type(a).__name__ == "MultiValue":
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def assert_same(orig: Dataset, back: Dataset, where: str = "") -> None:
    """Every element of ``orig`` (bar group lengths) is in ``back`` with the same VR and value."""
    tags = {int(t) for t in orig.keys() if not left_out(int(t))}
    assert tags == {int(t) for t in back.keys()}, where
    for tag in sorted(tags):
        a, b = orig[tag], back[tag]
        here = f"{where}{tag:08X}"
        assert a.VR == b.VR, here
        if a.VR == "SQ":
            assert len(a.value) == len(b.value), here
            for i, (x, y) in enumerate(zip(a.value, b.value)):
                assert_same(x, y, f"{here}/{i}/")
        else:
            assert same_value(a.value, b.value), (here, a.value, b.value)


def roundtrip(path: Path, threshold: int = 1024) -> tuple[dict, Dataset]:
    parsed = read(path)
    model = to_dicom_json(parsed.ds, bulk_uri, threshold=threshold, pixel=parsed.pixel)
    text = json.dumps(model, allow_nan=False)  # what the route sends: strict JSON
    back = Dataset.from_json(json.loads(text), bulk_data_uri_handler=handler(path, parsed))
    return model, back


def elements(model: dict, prefix: str = ""):
    """(path, element) for every element, at every depth."""
    for key, elem in model.items():
        yield prefix + key, elem
        if elem["vr"] == "SQ":
            for i, item in enumerate(elem.get("Value", [])):
                yield from elements(item, f"{prefix}{key}/{i}/")


def built(tmp_path: Path) -> Path:
    """A file with every kind of value the model treats apart."""
    ds = make_ct(np.arange(24 * 16, dtype=np.int16).reshape(24, 16))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.FrameIncrementPointer = 0x00181063  # AT, one value
    ds.add_new(0x00209165, "AT", [0x00100010, 0x00200013])  # AT, several
    ds.SpacingBetweenSlices = "1.25"  # DS
    ds.ImagePositionPatient = ["-12.5", "", "3e2"]  # DS with an empty value among several
    ds.InstanceNumber = "7"  # IS
    ds.StudyDescription = ""  # empty
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]  # CS with an empty value
    ds.ReferringPhysicianName = "Doe^John"  # PN: alphabetic only
    ds.add_new(0x00101001, "PN", ["Roe^Jane", "", "=\u5c71\u7530^\u592a\u90ce"])  # an empty name; no alphabetic group
    ds.add_new(0x00091010, "LO", "DICOMSVC TEST")  # private creator
    block = 0x00091000
    ds.add_new(block | 0x11, "FL", [1.5, float("nan"), float("inf"), -float("inf")])
    ds.add_new(block | 0x12, "FD", [math.pi, -0.0, 1e-300])
    ds.add_new(block | 0x13, "US", [0, 1, 65535])
    ds.add_new(block | 0x14, "SS", [-32768, 32767])
    ds.add_new(block | 0x15, "UL", [4294967295])
    ds.add_new(block | 0x16, "SL", [-2147483648])
    ds.add_new(block | 0x17, "UV", [2**64 - 1])
    ds.add_new(block | 0x18, "SV", [-(2**63)])
    ds.add_new(block | 0x19, "OB", bytes(range(100)))  # small: inline
    ds.add_new(block | 0x1A, "OW", bytes(range(256)) * 20)  # 5120 bytes: bulk
    ds.add_new(block | 0x1B, "OF", np.linspace(0, 1, 8, dtype="<f4").tobytes())
    ds.add_new(block | 0x1C, "UN", b"\x01\x02\x03\x04" * 400)
    ds.add_new(block | 0x1D, "OB", b"")  # empty binary
    ds.add_new(block | 0x1E, "SQ", Sequence())  # empty sequence
    inner = Dataset()
    inner.add_new(0x00091010, "LO", "DICOMSVC TEST")
    inner.add_new(block | 0x19, "OB", b"\xaa" * 2000)
    deep = Dataset()
    deep.CodeValue = "113100"
    deep.add_new(0x00091010, "LO", "DICOMSVC TEST")
    deep.add_new(block | 0x1A, "OW", b"\x55\x66" * 700)
    inner.add_new(block | 0x20, "SQ", Sequence([deep]))
    ds.add_new(block | 0x20, "SQ", Sequence([Dataset(), inner]))  # an empty item, then a full one
    icon = Dataset()
    icon.Rows, icon.Columns = 30, 50
    icon.add_new(0x7FE00010, "OW", bytes(range(250)) * 12)  # nested pixel data: not the top-level one
    ds.IconImageSequence = Sequence([icon])
    return save(ds, tmp_path / "built.dcm")


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("threshold", [0, 1024])
def test_round_trips_through_pydicom(name, threshold):
    path = sample_file(name)
    _, back = roundtrip(path, threshold)
    assert_same(dcmread(path), back)


@pytest.mark.parametrize("threshold", [0, 64, 1024, 1 << 30])
def test_round_trips_a_built_dataset(tmp_path, threshold):
    path = built(tmp_path)
    _, back = roundtrip(path, threshold)
    assert_same(dcmread(path), back)


def test_round_trip_really_compares(tmp_path):
    """The comparison used above notices a changed value, a lost element and a changed item."""
    path = sample_file("rtplan.dcm")
    parsed = read(path)
    model = to_dicom_json(parsed.ds, bulk_uri)
    changed = json.loads(json.dumps(model))
    changed["300A0010"]["Value"][0]["300A0012"]["Value"] = [99]
    with pytest.raises(AssertionError):
        assert_same(dcmread(path), Dataset.from_json(changed))
    missing = dict(model)
    del missing["00100010"]
    with pytest.raises(AssertionError):
        assert_same(dcmread(path), Dataset.from_json(missing))


# -- shape of the model ----------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_keys_are_sorted_upper_hex_without_meta_or_group_lengths(name):
    path = sample_file(name)
    parsed = read(path)
    assert len(parsed.ds.file_meta) > 0
    model = to_dicom_json(parsed.ds, bulk_uri, pixel=parsed.pixel)

    def check(obj: dict) -> None:
        keys = list(obj)
        assert keys == sorted(keys)
        for key in keys:
            assert KEY_RE.match(key), key
            assert not key.startswith("0002"), key
            assert not key.endswith("0000"), key
            for item in obj[key].get("Value", []) if obj[key]["vr"] == "SQ" else []:
                check(item)

    check(model)


@pytest.mark.parametrize("name", FILES + ["built"])
def test_values_are_typed(name, tmp_path):
    path = built(tmp_path) if name == "built" else sample_file(name)
    parsed = read(path)
    model = to_dicom_json(parsed.ds, bulk_uri, pixel=parsed.pixel)
    for where, elem in elements(model):
        vr = elem["vr"]
        assert set(elem) <= {"vr", "Value", "InlineBinary", "BulkDataURI"}, where
        assert len(set(elem) & {"Value", "InlineBinary", "BulkDataURI"}) <= 1, where
        values = elem.get("Value")
        if values is None:
            continue
        assert isinstance(values, list) and values, where
        for v in values:
            if v is None:
                continue
            if vr in INT_VRS:
                assert type(v) is int, where
            elif vr in FLOAT_VRS:
                assert type(v) is float or v in ("NaN", "Infinity", "-Infinity"), where
            elif vr == "AT":
                assert isinstance(v, str) and KEY_RE.match(v), where
            elif vr == "PN":
                assert isinstance(v, dict) and v and set(v) <= {"Alphabetic", "Ideographic", "Phonetic"}, where
                assert all(isinstance(part, str) and part for part in v.values()), where
            elif vr == "SQ":
                assert isinstance(v, dict), where
            else:
                assert isinstance(v, str), where
        assert vr not in BINARY_VRS, where


def test_numbers_and_strings_match_the_dataset():
    path = sample_file("CT_small.dcm")
    ds = dcmread(path, stop_before_pixels=True)
    model = to_dicom_json(read(path).ds, bulk_uri)
    for keyword in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation"):  # US
        assert model[f"{ds.data_element(keyword).tag:08X}"]["Value"] == [int(ds[keyword].value)]
    for keyword in ("ImagePositionPatient", "PixelSpacing", "RescaleIntercept"):  # DS
        value = ds[keyword].value
        expected = [float(v) for v in (value if ds[keyword].VM > 1 else [value])]
        assert model[f"{ds.data_element(keyword).tag:08X}"]["Value"] == expected
    assert model["00200013"]["Value"] == [int(ds.InstanceNumber)]  # IS
    assert model["00080060"] == {"vr": "CS", "Value": [ds.Modality]}
    assert model["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": str(ds.PatientName)}]}


@pytest.mark.parametrize("name", ["chrH31.dcm", "chrX1.dcm"])
def test_person_names_keep_their_groups(name):
    path = sample_file(name)
    ds = dcmread(path)
    model = to_dicom_json(read(path).ds, bulk_uri)
    groups = ("Alphabetic", "Ideographic", "Phonetic")
    expected = {g: part for g, part in zip(groups, ds.PatientName.components) if part}
    assert model["00100010"]["Value"] == [expected]
    assert "Ideographic" in expected  # these files are about non-Latin groups
    assert all(ord(c) > 0x2000 for c in expected["Ideographic"].replace("^", ""))
    # text stays text: ensure_ascii=False writes the characters themselves
    assert expected["Ideographic"] in json.dumps(model, ensure_ascii=False)


def test_built_values(tmp_path):
    path = built(tmp_path)
    ds = dcmread(path)
    model = to_dicom_json(read(path).ds, bulk_uri, threshold=1024)
    assert model["00280009"] == {"vr": "AT", "Value": [f"{int(ds.FrameIncrementPointer):08X}"]}
    assert model["00209165"]["Value"] == [f"{int(t):08X}" for t in ds[0x00209165].value]
    assert model["00180088"]["Value"] == [float(ds.SpacingBetweenSlices)]
    assert model["00200032"]["Value"] == [float(ds.ImagePositionPatient[0]), None, float(ds.ImagePositionPatient[2])]
    assert model["00080008"]["Value"] == [ds.ImageType[0], None, ds.ImageType[2]]
    assert model["00081030"] == {"vr": "LO"}  # empty: no Value
    names = ds[0x00101001].value
    assert model["00101001"]["Value"] == [{"Alphabetic": str(names[0])}, None, {"Ideographic": names[2].components[1]}]
    assert model["00091011"]["Value"] == [1.5, "NaN", "Infinity", "-Infinity"]
    assert model["00091012"]["Value"] == as_list(ds[0x00091012].value)
    for tag in (0x00091013, 0x00091014, 0x00091015, 0x00091016, 0x00091017, 0x00091018):
        assert model[f"{tag:08X}"]["Value"] == as_list(ds[tag].value)
    assert base64.b64decode(model["00091019"]["InlineBinary"]) == ds[0x00091019].value
    assert model["0009101D"] == {"vr": "OB"}
    assert model["0009101E"] == {"vr": "SQ"}
    assert model["00091020"]["Value"][0] == {}


# -- bulk data -------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, 64, 1024, 3000])
@pytest.mark.parametrize("name", ["built", "examples_palette.dcm", "CT_small.dcm"])
def test_bulk_data_above_the_threshold_is_never_inlined(name, threshold, tmp_path):
    path = built(tmp_path) if name == "built" else sample_file(name)
    parsed = read(path)
    model = to_dicom_json(parsed.ds, bulk_uri, threshold=threshold, pixel=parsed.pixel)
    seen = {"inline": 0, "bulk": 0}
    for where, elem in elements(model):
        if "InlineBinary" in elem:
            seen["inline"] += 1
            assert len(base64.b64decode(elem["InlineBinary"])) <= threshold, where
        if "BulkDataURI" in elem:
            seen["bulk"] += 1
            assert elem["BulkDataURI"] == bulk_uri(where)
            assert len(bulk_value(path, parsed, where)) > threshold or where == "7FE00010", where
    assert seen["bulk"] > 0  # the pixel data at least
    if threshold == 0:
        assert seen["inline"] == 0


def test_bulk_paths_inside_sequences(tmp_path):
    path = built(tmp_path)
    ds = dcmread(path)
    parsed = read(path)
    model = to_dicom_json(parsed.ds, bulk_uri, threshold=1024, pixel=parsed.pixel)
    nested = {
        "00091020/1/00091019": ds[0x00091020][1][0x00091019].value,
        "00091020/1/00091020/0/0009101A": ds[0x00091020][1][0x00091020][0][0x0009101A].value,
        "00880200/0/7FE00010": ds.IconImageSequence[0].PixelData,
    }
    uris = {elem["BulkDataURI"] for _, elem in elements(model) if "BulkDataURI" in elem}
    for where, value in nested.items():
        assert bulk_uri(where) in uris
        assert bulk_value(path, parsed, where) == value
    assert bulk_value(path, parsed, "7FE00010") == ds.PixelData  # the top-level one, from the file
    assert bulk_value(path, parsed, "7fe00010") == ds.PixelData  # hex in any case


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg.dcm",  # encapsulated, but the file says OW: OB, as pydicom reads it
        "image_dfl.dcm",
    ],
)
def test_pixel_data_is_always_bulk_and_read_as_stored(name):
    path = sample_file(name)
    parsed = read(path)
    ds = dcmread(path)
    model = to_dicom_json(parsed.ds, bulk_uri, threshold=1 << 40, pixel=parsed.pixel)
    assert model["7FE00010"] == {"vr": ds["PixelData"].VR, "BulkDataURI": bulk_uri("7FE00010")}
    assert bulk_value(path, parsed, "7FE00010") == ds.PixelData  # encapsulated: the items as stored


def test_pixel_data_streams_from_the_file_in_chunks():
    path = sample_file("examples_ybr_color.dcm")
    parsed = read(path)
    assert "PixelData" not in parsed.ds and parsed.pixel.offset is not None
    length, chunks = bulk_stream(path, parsed, "7FE00010")
    chunks = list(chunks)
    assert length == parsed.pixel.length == sum(map(len, chunks))
    assert max(map(len, chunks)) <= 1 << 20
    assert b"".join(chunks) == dcmread(path).PixelData


def test_pixel_data_of_a_file_cut_short(tmp_path):
    source = sample_file("CT_small.dcm")
    parsed = read(source)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(source.read_bytes()[: parsed.pixel.offset + 100])
    length, chunks = bulk_stream(cut, parsed, "7FE00010")
    assert length == 100 == len(b"".join(chunks))


@pytest.mark.parametrize(
    "where",
    [
        "",
        "7FE0001",  # not 8 digits
        "7FE00010/",
        "GGGG0010",
        "00100010",  # PN: not binary
        "00091020",  # a sequence
        "00091020/2/00091019",  # no such item
        "00091020/0/00091019",  # an empty item
        "00091011/0/00091019",  # not a sequence
        "00091020/1/00091010",  # text inside an item
        "00091099",  # not there
        "00020010",  # file meta
    ],
)
def test_bulk_value_not_found(where, tmp_path):
    path = built(tmp_path)
    with pytest.raises(NotFound):
        bulk_value(path, read(path), where)


def test_group_lengths_are_left_out():
    path = sample_file("ExplVR_BigEnd.dcm")
    parsed = read(path)
    lengths = [int(t) for t in parsed.ds.keys() if int(t) & 0xFFFF == 0]
    assert lengths
    model = to_dicom_json(parsed.ds, bulk_uri, pixel=parsed.pixel)
    for tag in lengths:
        assert f"{tag:08X}" not in model
        with pytest.raises(NotFound):
            bulk_value(path, parsed, f"{tag:08X}")


def test_no_pixel_data_no_bulk():
    path = sample_file("rtplan.dcm")
    parsed = read(path)
    assert "7FE00010" not in to_dicom_json(parsed.ds, bulk_uri, pixel=parsed.pixel)
    with pytest.raises(NotFound):
        bulk_value(path, parsed, "7FE00010")


def test_values_pydicom_cannot_read_still_make_strict_json():
    path = sample_file("badVR.dcm")  # an IS of "1A", among others
    model = to_dicom_json(read(path).ds, bulk_uri)
    json.dumps(model, allow_nan=False)
    assert model  # nothing dropped wholesale


def _every_readable_test_file() -> list[Path]:
    from pydicom.data import get_testdata_files

    return [Path(f) for f in sorted(get_testdata_files("*")) if f.endswith((".dcm", ".DCM")) or "." not in Path(f).name]


def test_from_rows_is_to_dicom_json_without_inline_binaries(tmp_path):
    """What ingest stores for WADO-RS metadata (made from the flattened rows) is the DICOM
    JSON of pydicom's reading, bulk data as URIs, for every file pydicom ships that reads,
    and for a built one with an empty item, AT, PN groups, multi-valued numbers and text."""
    import warnings

    from dicomsvc.dicom.dicomjson import from_rows
    from dicomsvc.dicom.tags import flatten

    mine = make_ct(PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう", ImageType=["ORIGINAL", "PRIMARY"],
                   WindowCenter=[40, 400], FrameIncrementPointer=0x00181063, ImageComments="a \\ b")  # fmt: skip
    mine.ReferencedImageSequence = Sequence([Dataset(), Dataset()])
    mine.ReferencedImageSequence[1].ReferencedSOPInstanceUID = "1.2.3"
    files = [save(mine, tmp_path / "mine.dcm"), built(tmp_path), *_every_readable_test_file()]
    compared = 0
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                parsed = read(path)
            except Exception:
                continue  # files pydicom ships as examples of what cannot be read
            rows = flatten(parsed.ds, parsed.pixel)
            expected = to_dicom_json(parsed.ds, lambda p: PREFIX + p, threshold=0, pixel=parsed.pixel)
        got = from_rows(rows, lambda p: PREFIX + p, parsed.ds, parsed.pixel)
        assert json.dumps(got) == json.dumps(expected), path.name  # order too
        compared += 1
    assert compared > 100
    assert got is not None


def test_stored_metadata_takes_item_counts_from_the_rows(tmp_path):
    """Sequence rows carry their item count (``TagRow.items``, empty items included), so the
    stored DICOM JSON is made without pydicom converting any sequence again (PS3.18 F.2.6)."""
    from pydicom.dataelem import RawDataElement

    from dicomsvc.dicom.dicomjson import stored_metadata
    from dicomsvc.dicom.tags import flatten

    ds = make_ct()
    ds.ReferencedImageSequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedImageSequence[1].ReferencedSOPInstanceUID = "1.2.3"
    path = save(ds, tmp_path / "seq.dcm")
    parsed = read(path)
    rows = flatten(parsed.ds, parsed.pixel)
    text = stored_metadata(parsed, rows, "1.2", "1.3", parsed.sop_instance_uid)
    assert type(parsed.ds.get_item(0x00081140)) is RawDataElement  # never converted
    fresh = read(path)
    uri = "/dicomweb/studies/1.2/series/1.3/instances/" + fresh.sop_instance_uid + "/bulk/"
    expected = to_dicom_json(fresh.ds, lambda p: uri + p, threshold=0, pixel=fresh.pixel)
    assert json.loads(text) == expected
    assert json.loads(text)["00081140"]["Value"] == [{}, {"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]
