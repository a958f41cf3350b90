"""Tag flattening: the rows GET /tags serves, checked directly and through HTTP."""

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomfiles import make_ct, sample_file, save
from dicomsvc.dicom import tags
from dicomsvc.dicom.parse import read
from dicomsvc.dicom.tags import flatten, format_tag


def rows_of(path: Path):
    parsed = read(path)
    return flatten(parsed.ds, parsed.pixel)


def by_keyword(rows, keyword):
    return [r for r in rows if r.keyword == keyword]


def test_file_meta_first_then_file_order_and_pixel_data_in_its_place():
    rows = rows_of(sample_file("CT_small.dcm"))
    top = [r for r in rows if r.parent is None]
    groups = [r.tag >> 16 for r in top]
    assert groups[0] == 0x0002 and 0x0002 not in groups[groups.index(0x0008):]
    body = [r.tag for r in top if r.tag >> 16 != 0x0002]
    assert body == sorted(body)  # the standard's order, which is the file's
    assert top[-2].keyword == "PixelData"  # then the file's (FFFC,FFFC) Data Set Trailing Padding
    assert top[-2].value is None and top[-2].nbytes == 128 * 128 * 2
    assert top[-1].keyword == "DataSetTrailingPadding"


def test_values_vrs_and_names_match_pydicom():
    path = sample_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    rows = rows_of(path)
    for row in rows:
        assert len(row.vr) == 2 and row.vr.isalpha() and row.vr.isupper()
    (name,) = by_keyword(rows, "PatientName")
    assert name.value == str(ds.PatientName) and name.vr == "PN"
    (position,) = by_keyword(rows, "ImagePositionPatient")
    assert position.value == "\\".join(str(v) for v in ds.ImagePositionPatient)
    assert position.value.count("\\") == 2
    (rows_elem,) = by_keyword(rows, "Rows")
    assert rows_elem.value == str(ds.Rows) and rows_elem.vr == "US"
    (meta_version,) = by_keyword(rows, "FileMetaInformationVersion")
    assert meta_version.value is None and meta_version.nbytes == 2


def test_ds_values_keep_their_original_text(tmp_path):
    ds = make_ct()
    ds.SliceThickness = "2.50"
    ds.ImagePositionPatient = ["-125.000", "0", "1e2"]
    rows = rows_of(save(ds, tmp_path / "x.dcm"))
    assert by_keyword(rows, "SliceThickness")[0].value == "2.50"
    assert by_keyword(rows, "ImagePositionPatient")[0].value == "-125.000\\0\\1e2"


def test_nested_sequences_carry_parent_and_item():
    rows = rows_of(sample_file("rtplan.dcm"))
    ds = pydicom.dcmread(sample_file("rtplan.dcm"))
    (fractions,) = by_keyword(rows, "FractionGroupSequence")
    index = rows.index(fractions)
    assert fractions.vr == "SQ" and fractions.value is None
    children = [r for r in rows if r.parent == index]
    assert {r.item for r in children} == set(range(len(ds.FractionGroupSequence)))
    (beams,) = [r for r in children if r.keyword == "ReferencedBeamSequence"]
    grandchildren = [r for r in rows if r.parent == rows.index(beams)]
    expected = ds.FractionGroupSequence[0].ReferencedBeamSequence
    assert len({r.item for r in grandchildren}) == len(expected)
    dose = [r for r in grandchildren if r.keyword == "BeamDose"]
    assert [d.value for d in dose] == [str(item.BeamDose) for item in expected]
    # children come right after their sequence row, before the next top-level element
    assert rows[index + 1].parent == index


def test_item_indexes_restart_for_each_sequence(tmp_path):
    ds = make_ct()
    items = []
    for code in ("A", "B", "C"):
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "99TEST"
        items.append(item)
    ds.ProcedureCodeSequence = Sequence(items)
    rows = rows_of(save(ds, tmp_path / "seq.dcm"))
    (seq,) = by_keyword(rows, "ProcedureCodeSequence")
    codes = [(r.item, r.value) for r in rows if r.parent == rows.index(seq) and r.keyword == "CodeValue"]
    assert codes == [(0, "A"), (1, "B"), (2, "C")]


def test_private_tags_have_empty_name():
    rows = rows_of(sample_file("CT_small.dcm"))
    private = [r for r in rows if (r.tag >> 16) % 2 == 1]
    assert private and all(r.keyword == "" for r in private)


def test_private_sequence_in_implicit_vr():
    rows = rows_of(sample_file("priv_SQ.dcm"))
    assert [r.tag_str for r in rows if r.parent is None][-2:] == ["(3F03,0010)", "(3F03,1001)"]


def test_charsets_are_decoded():
    expected = {
        "chrH31.dcm": "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "chrX1.dcm": "Wang^XiaoDong=王^小東",
        "chrRuss.dcm": "Люкceмбypг",
        "chrGerm.dcm": "Äneas^Rüdiger",
        "chrI2.dcm": "Hong^Gildong=洪^吉洞=홍^길동",
        "chrArab.dcm": "قباني^لنزار",
    }
    for name, patient in expected.items():
        (row,) = by_keyword(rows_of(sample_file(name)), "PatientName")
        assert row.value == patient, name


def test_charset_inside_sequences():
    rows = rows_of(sample_file("chrSQEncoding.dcm"))
    names = [r.value for r in by_keyword(rows, "PatientName")]
    assert any("=" in n and any(ord(c) > 0x3000 for c in n) for n in names), names


def test_binary_vrs_and_at_and_ambiguous_vrs(tmp_path):
    ds = make_ct(np.zeros((4, 4), np.int16))
    ds.FrameIncrementPointer = 0x00181063
    ds.add_new(0x00291010, "OB", b"\x01\x02\x03\x04")
    ds.SmallestImagePixelValue = -5  # 'US or SS' in the dictionary: SS here (signed pixels)
    implicit = tmp_path / "implicit.dcm"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    save(ds, implicit)
    rows = rows_of(implicit)
    (pointer,) = by_keyword(rows, "FrameIncrementPointer")
    assert (pointer.vr, pointer.value) == ("AT", "(0018,1063)")
    (private,) = [r for r in rows if r.tag == 0x00291010]
    assert private.value is None and private.nbytes == 4 and private.vr == "UN"
    (smallest,) = by_keyword(rows, "SmallestImagePixelValue")
    assert smallest.vr == "SS" and smallest.value == "-5"


def test_format_tag():
    assert format_tag(0x7FE00010) == "(7FE0,0010)"
    assert format_tag(0x0010000A) == "(0010,000A)"


def test_tags_over_http_have_the_documented_shape(client, put):
    instance_id = client.post("/dicom", json={"path": put("rtplan.dcm")}).json()["id"]
    body = client.get("/tags", params={"id": instance_id}).json()
    assert body["uuid"] == instance_id
    rows = body["tags"]
    ids = [r["ID"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for row in rows:
        assert {"ID", "Tag", "VR", "Value", "Name"} <= row.keys()
        assert row["Tag"] == row["Tag"].upper() and len(row["Tag"]) == 11
        if "Parent" in row:
            parent = next(r for r in rows if r["ID"] == row["Parent"])
            assert parent["VR"] == "SQ" and isinstance(row["Item"], int)
    assert rows[0]["Tag"].startswith("(0002,")
    (plan,) = [r for r in rows if r["Name"] == "RTPlanLabel"]
    assert plan["Value"] == "Plan1" and "Parent" not in plan
    version = next(r for r in rows if r["Name"] == "FileMetaInformationVersion")
    assert version["Value"] is None and version["Bytes"] == 2


def test_tags_of_two_instances_do_not_mix(client, put):
    a = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    b = client.post("/dicom", json={"path": put("chrH31.dcm")}).json()["id"]
    tags_a = client.get("/tags", params={"id": a}).json()["tags"]
    tags_b = client.get("/tags", params={"id": b}).json()["tags"]
    name_b = next(r["Value"] for r in tags_b if r["Name"] == "PatientName")
    assert name_b == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert not {r["ID"] for r in tags_a} & {r["ID"] for r in tags_b}
    assert len(tags_a) == len(rows_of(sample_file("CT_small.dcm")))


def all_bundled_instances():
    from dicomsvc.errors import InvalidDicom

    folder = sample_file("CT_small.dcm").parent
    for path in sorted(folder.glob("*.dcm")) + sorted(sample_file("chrH31.dcm").parent.glob("*.dcm")):
        try:
            read(path)
        except InvalidDicom:
            continue
        yield path


def every_bundled_instance():
    """Every file pydicom ships (test files, charset files) and the pydicom-data package
    holds (a test extra, installed in the venv: never downloaded), that ``read`` takes."""
    import data_store
    from pydicom.data import get_charset_files, get_testdata_files

    from dicomsvc.errors import DicomSvcError

    store = Path(data_store.__file__).parent / "data"
    paths = {Path(p) for p in get_testdata_files() + get_charset_files()}
    paths |= set(store.rglob("*"))
    site = store.parent.parent
    for path in sorted(p for p in paths if p.is_file()):
        try:
            read(path)
        except DicomSvcError:
            continue
        yield pytest.param(path, id=str(path.relative_to(site)) if path.is_relative_to(site) else path.name)


BUNDLED = list(every_bundled_instance())


def test_the_bundled_files_are_found():
    names = {p.values[0].name for p in BUNDLED}
    assert len(BUNDLED) > 200 and {"CT_small.dcm", "chrH31.dcm", "JPGExtended.dcm", "DICOMDIR"} <= names


@pytest.mark.parametrize("path", BUNDLED)
def test_fast_path_gives_the_same_rows_as_pydicom(path):
    fast = flatten(*_parsed(path), fast=True)
    slow = flatten(*_parsed(path), fast=False)
    assert fast == slow


def _header_ct(syntax, undefined_lengths: bool = False) -> Dataset:
    """A CT header as scanners write it: names, codes, nested sequences, a group length."""
    ds = make_ct(np.zeros((4, 4), np.int16))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Müller^Hans=="  # empty trailing groups: dropped
    ds.ReferringPhysicianName = ["Doe^John", "Roe^Jane="]
    ds.OperatorsName = ""
    ds.InstitutionName = "Klinik Süd"
    ds.ImagePositionPatient = ["-125.000", "-125", "12.5"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = "2.50"
    ds.KVP = "120"
    ds.FrameIncrementPointer = 0x00181063
    ds.add_new(0x00180000, "UL", 0)  # a (retired) group length, as older scanners write
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D0050", "SRT", "Tissue"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator = "T-D4000", "SRT"
    region.AnatomicRegionModifierSequence = Sequence([code])
    ds.AnatomicRegionSequence = Sequence([region, Dataset()])  # the second item empty
    request = Dataset()
    request.RequestedProcedureID = "RP1"
    request.ScheduledProcedureStepID = "SPS1"
    request.ReferencedStudySequence = Sequence()
    ds.RequestAttributesSequence = Sequence([request])
    dose = Dataset()
    dose.CTDIvol = 12.5
    dose.add_new(0x00189346, "SQ", Sequence([code]))  # CTDI Phantom Type Code Sequence
    ds.CTExposureSequence = Sequence([dose])
    if undefined_lengths:
        for sequence in (ds.AnatomicRegionSequence, ds.RequestAttributesSequence, region.AnatomicRegionModifierSequence):
            for item in sequence:
                item.is_undefined_length_sequence_item = True
        for keyword in ("AnatomicRegionSequence", "RequestAttributesSequence", "CTExposureSequence"):
            ds[keyword].is_undefined_length = True
        region["AnatomicRegionModifierSequence"].is_undefined_length = True
        dose[0x00189346].is_undefined_length = True
    return ds


SYNTAXES = [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian]


@pytest.mark.parametrize("undefined", [False, True], ids=["defined-lengths", "undefined-lengths"])
@pytest.mark.parametrize("syntax", SYNTAXES, ids=["explicit", "implicit"])
def test_an_ordinary_ct_takes_the_fast_path_throughout(tmp_path, syntax, undefined):
    """No element of a CT header, nested sequences included, is converted by pydicom
    (``tags.CONVERTED`` counts those that are), and the rows are pydicom's."""
    path = save(_header_ct(syntax, undefined), tmp_path / "ct.dcm")
    tags.CONVERTED.clear()
    fast = flatten(*_parsed(path))
    assert sum(tags.CONVERTED.values()) == 0, tags.CONVERTED
    assert fast == flatten(*_parsed(path), fast=False)
    assert sum(tags.CONVERTED.values()) > len(fast) // 2  # and the counter does count
    values = {r.keyword: r.value for r in fast}
    assert values["PatientName"] == "Müller^Hans" and values["ReferringPhysicianName"] == "Doe^John\\Roe^Jane"
    assert values["InstitutionName"] == "Klinik Süd" and values["FrameIncrementPointer"] == "(0018,1063)"
    sequences = {r.keyword: r.items for r in fast if r.vr == "SQ"}
    assert sequences == {
        "AnatomicRegionSequence": 2, "AnatomicRegionModifierSequence": 1, "RequestAttributesSequence": 1,
        "ReferencedStudySequence": 0, "CTExposureSequence": 1, "CTDIPhantomTypeCodeSequence": 1,
    }  # fmt: skip
    (modifier,) = by_keyword(fast, "AnatomicRegionModifierSequence")
    meaning = [r for r in fast if r.parent == fast.index(modifier)]
    assert [(r.keyword, r.item, r.value) for r in meaning][-1] == ("CodeMeaning", 0, "Tissue")


def test_the_bench_corpus_takes_the_fast_path(tmp_path):
    """bench/corpus.py's synthetic CT (what bench/ingest_stages.py times) converts nothing."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        import corpus
    finally:
        sys.path.pop(0)
    made = corpus.make(tmp_path, 1, 1234)
    path = made.instances[0].path
    tags.CONVERTED.clear()
    fast = flatten(*_parsed(path))
    assert not tags.CONVERTED and len(fast) > 100
    assert fast == flatten(*_parsed(path), fast=False)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["explicit", "implicit"])
def test_unusual_items_go_through_pydicom_with_the_same_rows(tmp_path, syntax):
    """An item with its own Specific Character Set (PS3.5 §7.5.1: it applies inside the
    item), or a private element in an item, is left to pydicom, its sequence as a whole."""
    ds = _header_ct(syntax)
    ds.AnatomicRegionSequence[0].SpecificCharacterSet = "ISO_IR 192"
    ds.AnatomicRegionSequence[0].CodeMeaning = "Ünter"
    ds.RequestAttributesSequence[0].add_new(0x00190010, "LO", "ACME")
    ds.RequestAttributesSequence[0].add_new(0x00191001, "LO", "private")
    path = save(ds, tmp_path / "odd.dcm")
    tags.CONVERTED.clear()
    fast = flatten(*_parsed(path))
    # the private element is read fast where its VR is in the file (Explicit VR)
    assert tags.CONVERTED["SQ"] == (2 if syntax.is_implicit_VR else 1)
    assert fast == flatten(*_parsed(path), fast=False)
    assert [r.value for r in by_keyword(fast, "CodeMeaning")] == ["Ünter", "Tissue", "Tissue"]


def test_damaged_item_structure_goes_through_pydicom(tmp_path):
    """Elements out of order inside an item: pydicom sorts them, and so do the rows."""
    ds = make_ct()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "A", "B"
    ds.ProcedureCodeSequence = Sequence([item])
    raw = save(ds, tmp_path / "in.dcm").read_bytes()
    value = b"\x08\x00\x00\x01SH\x02\x00A \x08\x00\x02\x01SH\x02\x00B "
    swapped = b"\x08\x00\x02\x01SH\x02\x00B \x08\x00\x00\x01SH\x02\x00A "
    assert raw.count(value) == 1
    path = tmp_path / "swapped.dcm"
    path.write_bytes(raw.replace(value, swapped))
    tags.CONVERTED.clear()
    fast = flatten(*_parsed(path))
    assert tags.CONVERTED == {"SQ": 1}
    assert fast == flatten(*_parsed(path), fast=False)
    assert [r.keyword for r in fast if r.parent is not None] == ["CodeValue", "CodingSchemeDesignator"]


def test_fast_path_on_padding_and_multivalues(tmp_path):
    ds = make_ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL ", "PRIMARY", "AXIAL"]
    ds.StationName = "Ünïcode "
    ds.StudyDescription = "a\\b"  # LO: backslash separates values
    ds.ImageComments = "free text \\ with backslash  "  # LT: one value
    ds.PixelSpacing = [" 0.5", "0.50 "]
    ds.add_new(0x00181310, "US", [0, 256, 256, 0])  # AcquisitionMatrix
    ds.add_new(0x00189087, "FD", 1.25)
    rows_path = save(ds, tmp_path / "pad.dcm")
    fast = flatten(*_parsed(rows_path), fast=True)
    assert fast == flatten(*_parsed(rows_path), fast=False)
    values = {r.keyword: r.value for r in fast}
    assert values["StationName"] == "Ünïcode" and values["AcquisitionMatrix"] == "0\\256\\256\\0"
    assert values["ImageComments"] == "free text \\ with backslash"
    assert values["DiffusionBValue"] == "1.25"


def _parsed(path):
    parsed = read(path)
    return parsed.ds, parsed.pixel


def test_trailing_padding_after_pixel_data_is_the_last_row(client, put):
    # issue 8: CT_small.dcm ends with (FFFC,FFFC) Data Set Trailing Padding after the Pixel Data
    padding = pydicom.dcmread(sample_file("CT_small.dcm"))[0xFFFCFFFC]
    instance_id = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    rows = client.get("/tags", params={"id": instance_id}).json()["tags"]
    assert [r["Tag"] for r in rows[-2:]] == ["(7FE0,0010)", "(FFFC,FFFC)"]
    last = rows[-1]
    assert (last["VR"], last["Value"], last["Bytes"]) == ("OB", None, len(padding.value)) == ("OB", None, 126)
    assert last["Name"] == "DataSetTrailingPadding" and "Parent" not in last


@pytest.mark.parametrize(
    "syntax",
    [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian],
    ids=["explicit", "implicit", "big-endian"],
)
def test_elements_after_pixel_data_are_rows_in_file_order(tmp_path, syntax):
    ds = make_ct(np.zeros((8, 8), np.int16))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.add_new(0x7FE10010, "LO", "ACME 1.1")  # private block after the pixel data
    ds.add_new(0x7FE11001, "LO", "after")
    ds.add_new(0x7FE11002, "US", 513)
    ds.add_new(0x7FE11003, "OB", b"\x01\x02\x03\x04")
    item = Dataset()
    item.CodeValue = "X"
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([item]))  # Digital Signatures Sequence, one item
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 6)
    path = save(ds, tmp_path / "after.dcm")
    for fast in (True, False):
        rows = flatten(*_parsed(path), fast=fast)
        top = [r for r in rows if r.parent is None]
        tags = [r.tag for r in top]
        expected_tail = [0x7FE00010, 0x7FE10010, 0x7FE11001, 0x7FE11002, 0x7FE11003, 0xFFFAFFFA, 0xFFFCFFFC]
        assert tags[-7:] == expected_tail and tags.count(0x7FE00010) == 1
        values = {r.tag: (r.vr, r.value, r.nbytes) for r in top}
        if syntax.is_implicit_VR:  # an unknown private creator: no VR to read them with
            assert values[0x7FE11001] == ("UN", None, 6) and values[0x7FE11002] == ("UN", None, 2)
        else:
            assert values[0x7FE11001] == ("LO", "after", None) and values[0x7FE11002] == ("US", "513", None)
        assert values[0x7FE10010][1] == "ACME 1.1"
        assert values[0x7FE11003][1:] == (None, 4)
        assert values[0xFFFCFFFC] == ("OB", None, 6)
        assert values[0x7FE00010][1:] == (None, 8 * 8 * 2)
        seq = rows.index(next(r for r in top if r.tag == 0xFFFAFFFA))
        assert rows[seq + 1].parent == seq and (rows[seq + 1].keyword, rows[seq + 1].value) == ("CodeValue", "X")
        assert rows[-1].tag == 0xFFFCFFFC


@pytest.mark.parametrize("path", list(all_bundled_instances()), ids=lambda p: p.name)
def test_every_element_pydicom_reads_is_a_row(path, client, put):
    # the file meta, then every element dcmread (reading the whole file) has, in file order
    full = pydicom.dcmread(path, force=True)
    meta = getattr(full, "file_meta", None)
    expected = [int(t) for t in (meta.keys() if meta is not None else ())] + [int(t) for t in full.keys()]
    for fast in (True, False):
        top = [r.tag for r in flatten(*_parsed(path), fast=fast) if r.parent is None]
        assert top == expected
    instance_id = client.post("/dicom", json={"path": put(path.name)}).json()["id"]
    rows = client.get("/tags", params={"id": instance_id}).json()["tags"]
    assert [r["Tag"] for r in rows if "Parent" not in r] == [format_tag(t) for t in expected]


def _with_bytes(ds, tmp_path, values: dict[str, bytes]):
    """Save ``ds`` with each named element's value replaced by raw bytes (same length)."""
    for keyword in values:
        setattr(ds, keyword, "x" * len(values[keyword]))
    raw = save(ds, tmp_path / "raw.dcm").read_bytes()
    for keyword, value in values.items():
        element = ds[keyword]
        header = struct.pack("<HH", element.tag.group, element.tag.element) + element.VR.encode()
        at = raw.index(header) + len(header) + (6 if element.VR in ("UT", "UC", "UR") else 2)
        raw = raw[:at] + value + raw[at + len(value) :]
    path = tmp_path / "bytes.dcm"
    path.write_bytes(raw)
    return path


def test_invalid_utf8_under_iso_ir_192_becomes_replacement_characters(tmp_path, client):
    """(0008,0005) ISO_IR 192 is UTF-8 (PS3.3 C.12.1.1.2); bytes that are not UTF-8 are
    stored as they came and shown as U+FFFD, as pydicom decodes them, never a 500."""
    ds = make_ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    bad = {"StudyDescription": b"\xff\xfe", "ImageComments": b"ok \xc3(", "StationName": b"\xe9t\xe9 "}
    path = _with_bytes(ds, tmp_path, bad)
    fast = flatten(*_parsed(path), fast=True)
    assert fast == flatten(*_parsed(path), fast=False)
    values = {r.keyword: r.value for r in fast}
    assert values["StudyDescription"] == "\ufffd\ufffd" and values["ImageComments"] == "ok \ufffd("
    response = client.post("/dicom", content=path.read_bytes(), headers={"content-type": "application/dicom"})
    assert response.status_code == 201, response.text
    rows = client.get("/tags", params={"id": response.json()["id"]}).json()["tags"]
    assert {r["Name"]: r["Value"] for r in rows}["StationName"] == "\ufffdt\ufffd"
    assert client.get("/tags", params={"id": response.json()["id"], "format": "dicomjson"}).status_code == 200


@pytest.mark.parametrize("value", ["1.2.840.10008.5.1.4.1.1.2", ""], ids=["with-value", "empty"])
def test_an_unknown_vr_inside_a_sequence_item_is_a_un_row(tmp_path, value):
    ds = make_ct()
    item = Dataset()
    item.ReferencedSOPClassUID = value
    ds.ReferencedImageSequence = Sequence([item])
    raw = save(ds, tmp_path / "in.dcm").read_bytes()
    at = raw.index(b"\x08\x00\x50\x11UI")  # (0008,1150) inside the item
    path = tmp_path / "zz.dcm"
    path.write_bytes(raw[: at + 4] + b"ZZ" + raw[at + 6 :])
    for fast in (True, False):
        rows = flatten(*_parsed(path), fast=fast)
        nested = [r for r in rows if r.tag == 0x00081150]
        assert [(r.vr, r.item) for r in nested] == [("UN", 0)]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["explicit", "implicit"])
def test_private_elements_get_the_private_dictionarys_vr(tmp_path, syntax):
    """A private element without a VR of its own (Implicit VR, or an explicit UN) takes the
    VR pydicom's private dictionary has for its creator (PS3.5 §6.2.2, §7.8.1), as pydicom
    shows it: an explicit UN of a known creator's element was a UN row on the fast path."""
    ds = make_ct(np.zeros((4, 4), np.int16))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291008, "UN", b"IMAGE NUM 4 ")  # CS in pydicom's private dictionary
    ds.add_new(0x00291010, "UN", b"\x01\x02")  # OB
    ds.add_new(0x00330010, "LO", "NOBODY WE KNOW")
    ds.add_new(0x00331001, "UN", b"\x01\x02")
    path = save(ds, tmp_path / "private.dcm")
    tags.CONVERTED.clear()
    fast = flatten(*_parsed(path))
    # Implicit VR: read straight from the bytes; an explicit UN pydicom re-reads is left to it
    assert sum(tags.CONVERTED.values()) == (0 if syntax.is_implicit_VR else 2)
    assert fast == flatten(*_parsed(path), fast=False)
    values = {r.tag: (r.vr, r.value, r.nbytes) for r in fast}
    assert values[0x00290010] == ("LO", "SIEMENS CSA HEADER", None)
    assert values[0x00291008] == ("CS", "IMAGE NUM 4", None) and values[0x00291010] == ("OB", None, 2)
    assert values[0x00331001] == ("UN", None, 2)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["explicit", "implicit"])
def test_odd_number_strings_and_control_characters_read_as_pydicom_reads_them(tmp_path, syntax):
    """Values a byte-flipping fuzzer made, where the fast path once differed from pydicom:
    an IS that is not an integer ("2.50" pydicom shows as 2.5) or too long for one, control
    characters pydicom strips (PS3.5 §6.1.2.3 allows none in these VRs), a NUL in an AE."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import BaseTag

    ds = make_ct(np.zeros((4, 4), np.int16))
    ds.file_meta.TransferSyntaxUID = syntax
    odd = {
        0x00180089: ("IS", b"2.50"),  # Number of Phase Encoding Steps
        0x00200013: ("IS", b"99999999999999999999"),  # Instance Number
        0x00200012: ("IS", b" 7 "),  # Acquisition Number: fine
        0x00200032: ("DS", b"-125.0\\-125\\\n2.5 "),  # Image Position (Patient)
        0x00200037: ("DS", b"1.0\\0\\0\\0\\1.0\\\x00.0"),  # Image Orientation (Patient)
        0x0020000E: ("UI", b"\x1d.2.3\x00"),  # Series Instance UID
        0x00080054: ("AE", b"AET\x00"),  # Retrieve AE Title
        0x00080060: ("CS", b"CT\x0c"),  # Modality
    }
    for tag, (vr, value) in odd.items():
        ds[tag] = RawDataElement(BaseTag(tag), None if syntax.is_implicit_VR else vr, len(value), value, 0,
                                 syntax.is_implicit_VR, True)  # fmt: skip
    path = save(ds, tmp_path / "odd.dcm")
    fast = flatten(*_parsed(path))
    assert fast == flatten(*_parsed(path), fast=False)
    values = {r.tag: r.value for r in fast}
    assert values[0x00180089] == "2.5" and values[0x00200012] == "7"
