"""dicomsvc.dicom.anonymize: PS3.15 Annex E basic profile + modified dates option."""

from __future__ import annotations

import copy
import datetime as dt
import io
import logging
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from dicomfiles import sample_file
from dicomsvc.dicom import anonymize as anon
from dicomsvc.dicom.anonymize import BurnedInAnnotation, anonymize, burned_in_reason, profile_table
from dicomsvc.errors import DicomSvcError
from phi_fixture import TRANSFER_SYNTAXES, _code, build_phi_dataset, build_study, to_bytes

SECRET = b"test-secret-0123456789"
OTHER_SECRET = b"another-secret-9876543210"
ROOT = Path(__file__).resolve().parent.parent
UID_RE = re.compile(r"2\.25\.(0|[1-9][0-9]*)")


def read(blob: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(blob))


def roundtrip(ds: Dataset, secret: bytes = SECRET, **kw) -> tuple[Dataset, bytes]:
    """Anonymize ``ds``, write it as a file, read it back: (re-read dataset, bytes)."""
    blob = to_bytes(anonymize(ds, secret, **kw))
    return read(blob), blob


def walk(ds: Dataset, depth: int = 0):
    """(depth, element) for every element at every depth, without decoding values twice."""
    for elem in ds:
        yield depth, elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item, depth + 1)


def days(da: str) -> dt.date:
    return dt.date(int(da[:4]), int(da[4:6]), int(da[6:8]))


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------
def test_profile_table_comes_from_the_pinned_package():
    table = profile_table()
    assert table.edition == anon.TABLE_EDITION
    assert table.package == anon.TABLE_PACKAGE == "dicom-anonymizer"
    # the installed version is the one pinned in pyproject.toml
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if d.replace("_", "-").lower().startswith(table.package + "==")]
    assert pins == [f"{table.package}=={table.package_version}"]
    assert table.package_version == anon.TABLE_PACKAGE_VERSION
    # it is the standard's whole table, not a hand-picked subset
    assert len(table.actions) > 600
    assert set(table.actions.values()) == {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    # the masked rows (curves, overlay data and comments) are there too
    assert table.action(0x50020010) == "X" and table.action(0x601E3000) == "X"


def test_table_actions_are_applied_as_documented():
    """Every table attribute of the PHI fixture comes out the way its action says.

    Combined actions: D wherever the table allows D (valid for Type 1, 2 and 3),
    else Z; an X/Z sequence that had items is removed (zero items is invalid for
    a Type 3 sequence). Dates and times follow the modified dates option instead;
    the attributes of the conditional rules are tested on their own (below).
    """
    src = read(to_bytes(build_phi_dataset()[0]))
    out = anonymize(src, SECRET)
    table = profile_table()
    top = [r for r in anon.CONDITIONAL_RULES if not r.within]  # rules that hold at the top level
    ruled = {r.attribute for r in top} | {r.on for r in top if r.action == "D"}
    seen = set()
    for elem in src:
        action = table.action(elem.tag)
        if action is None or elem.tag.is_private or elem.VR in ("DA", "DT", "TM") or elem.tag in ruled:
            continue
        if elem.tag in (0x00100010, 0x00100020, 0x00880200) or elem.tag.group & 0xFF00 in (0x5000, 0x6000):
            continue  # the pseudonym; removed anyway
        got = out.get(elem.tag)
        if "D" in action:
            want = "dummy"
        elif action == "X/Z":
            want = "absent" if elem.VR == "SQ" and len(elem.value) else "empty"
        else:
            want = {"X": "absent", "Z": "empty", "U": "uid", "X/Z/U*": "kept"}[action]
        seen.add(action)
        if want == "absent":
            assert got is None, elem.keyword
        elif want == "empty":
            assert got is not None and (not got.value or got.VR == "SQ" and len(got.value) == 0), elem.keyword
        elif want == "dummy":
            assert got is not None and got.value, elem.keyword
            if elem.VR == "SQ":
                assert len(got.value) == len(elem.value)
            elif isinstance(elem.value, MultiValue):  # one dummy per value
                assert list(got.value) == ["ANONYMIZED"] * len(elem.value), elem.keyword
            else:
                assert got.value == "ANONYMIZED", elem.keyword
        elif want == "uid":
            assert UID_RE.fullmatch(got.value) and got.value != elem.value, elem.keyword
    assert {"X", "Z", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "D"} <= seen


def test_profile_table_is_parsed_once():
    assert profile_table() is profile_table()


# --------------------------------------------------------------------------
# PHI planted everywhere: none of it survives, in any encoding
# --------------------------------------------------------------------------
@pytest.mark.parametrize("charset", [None, "ISO_IR 192"])
@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_no_planted_phi_survives(syntax, charset):
    ds, planted = build_phi_dataset(transfer_syntax=TRANSFER_SYNTAXES[syntax], charset=charset)
    blob = to_bytes(ds)
    # the markers are really in the input: a passthrough would be caught
    for needle in planted.markers + planted.dates + planted.uids:
        assert needle.encode() in blob, needle
    src = read(blob)

    out, out_blob = roundtrip(src)

    assert [m for m in planted.markers if m.encode() in out_blob] == []
    assert [d for d in planted.dates if d.encode() in out_blob] == []
    assert [u for u in planted.uids if u.encode() in out_blob] == []
    assert out.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    assert out.get("SpecificCharacterSet") == src.get("SpecificCharacterSet")
    assert out.PixelData == src.PixelData


def test_private_overlays_curves_icons_and_group_lengths_gone_at_every_depth():
    src = read(to_bytes(build_phi_dataset()[0]))
    found_in = {(d > 0, e.tag.is_private) for d, e in walk(src)}
    assert (True, True) in found_in and (False, True) in found_in  # planted deep and at the top
    assert any(e.tag.group & 0xFF00 == 0x6000 for _, e in walk(src))
    assert any(e.tag.group & 0xFF00 == 0x5000 for _, e in walk(src))
    assert "IconImageSequence" in src

    out, _ = roundtrip(src)

    for _, elem in walk(out):
        assert not elem.tag.is_private, elem.tag
        assert elem.tag.group & 0xFF00 not in (0x5000, 0x6000), elem.tag
        assert elem.tag != 0x00880200
        assert elem.tag.element != 0 or elem.tag.group == 2


def test_known_attributes_stored_as_un_and_stray_meta_elements():
    ds = build_study(patient_id="PAT-UN").instances[0][0]
    shift = anon.date_shift(SECRET, "PAT-UN")
    study_uid = ds.StudyInstanceUID
    ds.PatientName = "UNMARKER^ZQ"
    ds.StudyDate = "20190605"
    ds.StudyDescription = "UNDESCRIPTION ZQ"  # X in the table
    blob = to_bytes(ds)
    # re-encode those elements with VR UN, as some archives pass known attributes on
    for tag, vr in ((0x00100010, b"PN"), (0x00080020, b"DA"), (0x0020000D, b"UI"), (0x00081030, b"LO")):
        head = tag.to_bytes(4, "big")
        head = head[1::-1] + head[:1:-1] + vr  # group, element little endian, then the VR
        at = blob.index(head)
        length = int.from_bytes(blob[at + 6 : at + 8], "little")
        blob = blob[:at] + head[:4] + b"UN\0\0" + length.to_bytes(4, "little") + blob[at + 8 :]
    src = read(blob)
    assert src.get_item(0x00100010).VR == "UN" and b"UNMARKER" in blob and b"UNDESCRIPTION" in blob
    src.add_new(0x00020016, "AE", "STRAYMETAZQ")  # a file meta element in the data set

    out = anonymize(src, SECRET)
    out_blob = to_bytes(out)

    assert b"UNMARKER" not in out_blob and b"UNDESCRIPTION" not in out_blob and b"STRAYMETAZQ" not in out_blob
    assert study_uid.encode() not in out_blob
    assert out.StudyInstanceUID == anon.new_uid(SECRET, study_uid)
    assert days(out.StudyDate) == dt.date(2019, 6, 5) + shift
    assert 0x00020016 not in out


def test_file_meta_is_rebuilt_and_the_preamble_is_fresh():
    ds, planted = build_phi_dataset()
    ds.preamble = b"\xff" * 124 + b"TIFF"  # a dual-personality preamble
    src_blob = to_bytes(ds)
    src = read(src_blob)
    assert src.preamble != b"\x00" * 128

    out, blob = roundtrip(src)

    assert blob[:128] == b"\x00" * 128 and blob[128:132] == b"DICM"
    meta = out.file_meta
    assert set(meta.keys()) <= {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != src.SOPInstanceUID
    in_memory = anonymize(src, SECRET)  # not left for the writer to fill in
    assert in_memory.file_meta.MediaStorageSOPInstanceUID == in_memory.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in in_memory.file_meta
    for kw in ("MediaStorageSOPClassUID", "TransferSyntaxUID", "ImplementationClassUID"):
        assert meta[kw].value == src.file_meta[kw].value


def test_input_dataset_is_not_changed():
    ds, _ = build_phi_dataset()
    src = read(to_bytes(ds))
    before = to_bytes(src)
    raw_before = {t: type(src.get_item(t)) for t in src.keys()}
    in_memory = build_phi_dataset()[0]
    mem_before = copy.deepcopy(in_memory)

    anonymize(src, SECRET)
    anonymize(in_memory, SECRET)

    assert to_bytes(src) == before
    assert {t: type(src.get_item(t)) for t in src.keys()} == raw_before  # not even decoded
    assert in_memory == mem_before


def test_pixel_data_is_shared_not_copied():
    src = read(to_bytes(build_phi_dataset(rows=64, cols=64)[0]))
    out = anonymize(src, SECRET)
    assert out.get_item(0x7FE00010).value is src.get_item(0x7FE00010).value


# --------------------------------------------------------------------------
# markers, patient, dates
# --------------------------------------------------------------------------
def test_deidentification_markers():
    out, _ = roundtrip(read(to_bytes(build_phi_dataset()[0])))
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == anon.DEIDENTIFICATION_METHOD
    assert 0 < len(out.DeidentificationMethod) <= 64
    codes = {(c.CodeValue, c.CodingSchemeDesignator) for c in out.DeidentificationMethodCodeSequence}
    assert codes == {("113100", "DCM"), ("113107", "DCM")}
    assert all(c.CodeMeaning for c in out.DeidentificationMethodCodeSequence)
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_patient_pseudonym_is_keyed_and_consistent():
    a = build_study(patient_id="PATIENT-A").instances
    b = build_study(patient_id="PATIENT-B").instances
    out_a1, out_a2 = anonymize(a[0][0], SECRET), anonymize(a[1][2], SECRET)
    out_b = anonymize(b[0][0], SECRET)
    assert out_a1.PatientID == out_a2.PatientID != out_b.PatientID
    assert re.fullmatch(r"ANON-[0-9A-F]{16}", out_a1.PatientID)
    assert out_a1.PatientName.family_name == out_a1.PatientID
    assert anonymize(a[0][0], OTHER_SECRET).PatientID != out_a1.PatientID
    # Patient's Birth Date: Z in the table, Type 2 in the Patient module: present, empty
    assert "PatientBirthDate" in out_a1 and not out_a1.PatientBirthDate


def test_dates_shift_by_one_whole_nonzero_number_of_days_per_patient():
    first = build_study(patient_id="PAT-DATES", study_date="20190605").instances[0][0]
    second = build_study(patient_id="PAT-DATES", study_date="20200229").instances[1][1]
    o1, o2 = anonymize(first, SECRET), anonymize(second, SECRET)

    shift1 = days(o1.StudyDate) - days(first.StudyDate)
    shift2 = days(o2.StudyDate) - days(second.StudyDate)
    assert shift1 == shift2  # the interval between the studies survives
    assert dt.timedelta(days=-3650) <= shift1 <= dt.timedelta(days=-1)
    assert days(o2.StudyDate) - days(o1.StudyDate) == days(second.StudyDate) - days(first.StudyDate)
    # DT: the date moves, the time of day stays; TM is kept
    assert o1.AcquisitionDateTime[8:] == first.AcquisitionDateTime[8:]
    assert days(o1.AcquisitionDateTime[:8]) - days(first.AcquisitionDateTime[:8]) == shift1
    assert o1.StudyTime == first.StudyTime
    # the same in every attribute, at every depth
    assert days(o1.SeriesDate) - days(first.SeriesDate) == shift1
    # the shift is keyed: another secret moves the dates elsewhere
    assert anonymize(first, OTHER_SECRET).StudyDate != o1.StudyDate


def test_dates_nested_multivalued_partial_and_malformed():
    ds = build_study(patient_id="PAT-MALFORMED").instances[0][0]
    shift = anon.date_shift(SECRET, "PAT-MALFORMED")
    ds.DateOfLastCalibration = ["19991231", "20000101"]
    ds.ContentDate = "2019-06-05"  # malformed
    ds.SeriesDate = "notadate"  # malformed
    ds.InstanceCreationDate = "20191340"  # no 13th month
    ds.FrameAcquisitionDateTime = "2019060525"  # no 25th hour
    ds.StudyDate = "2019.06.05"  # ACR-NEMA style: read, written the standard way
    ds.add_new(0x0040A13A, "DT", "2019")  # Referenced DateTime: year precision only
    ds.StudyTime = "not a time"  # TM in the table: kept under the option when valid, else emptied
    ds.SeriesTime = "10:15:30"  # the old TM form is still a time
    # DA/DT attributes the table does not list are shifted all the same
    ds.add_new(0x00140102, "DA", "20190605")  # Secondary Review Date
    ds.add_new(0x00080416, "DT", "201906051200")  # Expiration DateTime
    item = Dataset()
    item.ValueType = "DATE"
    item.Date = "20190605"
    item.DateTime = "20190605235959.5-0500"
    container = Dataset()
    container.ValueType = "CONTAINER"
    container.ContentSequence = Sequence([item])
    ds.ContentSequence = Sequence([container])

    out = anonymize(ds, SECRET)

    shifted = [days(v) for v in out.DateOfLastCalibration]
    assert shifted == [dt.date(1999, 12, 31) + shift, dt.date(2000, 1, 1) + shift]
    for kw in ("ContentDate", "SeriesDate", "InstanceCreationDate", "FrameAcquisitionDateTime"):  # emptied
        assert kw in out and not out[kw].value, kw
    assert days(out.StudyDate) == dt.date(2019, 6, 5) + shift
    assert out[0x0040A13A].value == f"{(dt.date(2019, 1, 1) + shift).year:04d}"
    assert not out.StudyTime and out.SeriesTime == "10:15:30"
    assert days(out[0x00140102].value) == dt.date(2019, 6, 5) + shift
    assert out[0x00080416].value == (dt.date(2019, 6, 5) + shift).strftime("%Y%m%d") + "1200"
    deep = out.ContentSequence[0].ContentSequence[0]
    assert days(deep.Date) == dt.date(2019, 6, 5) + shift
    assert deep.DateTime[8:] == "235959.5-0500" and days(deep.DateTime[:8]) == dt.date(2019, 6, 5) + shift


# --------------------------------------------------------------------------
# a study in two calls: UIDs consistent, references kept
# --------------------------------------------------------------------------
def test_study_in_two_calls_keeps_its_structure_and_references():
    study = build_study()
    blobs = [[to_bytes(ds) for ds in series] for series in study.instances]
    originals = [[read(b) for b in series] for series in blobs]
    # first the whole first series, then the second, as two separate jobs would
    outs, out_blobs = [], []
    for series in originals:
        outs.append([]), out_blobs.append([])
        for ds in series:
            o, b = roundtrip(ds)
            outs[-1].append(o), out_blobs[-1].append(b)
    flat = [o for s in outs for o in s]

    assert len({o.StudyInstanceUID for o in flat}) == 1
    assert [len({o.SeriesInstanceUID for o in s}) for s in outs] == [1, 1]
    assert outs[0][0].SeriesInstanceUID != outs[1][0].SeriesInstanceUID
    assert len({o.FrameOfReferenceUID for o in flat}) == 1
    assert len({o.SOPInstanceUID for o in flat}) == 6
    for o in flat:
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
            assert UID_RE.fullmatch(o[kw].value) and len(o[kw].value) <= 64
        assert o.PatientID == flat[0].PatientID
    # references point at the new UIDs of the instances they referred to
    new_by_old = {src.SOPInstanceUID: o.SOPInstanceUID for s, so in zip(originals, outs) for src, o in zip(s, so)}
    checked = 0
    for s, so in zip(originals, outs):
        for src, o in zip(s, so):
            for seq in ("ReferencedImageSequence", "SourceImageSequence"):
                for ref_src, ref_out in zip(src.get(seq, []), o.get(seq, [])):
                    assert ref_out.ReferencedSOPInstanceUID == new_by_old[ref_src.ReferencedSOPInstanceUID]
                    assert ref_out.ReferencedSOPClassUID == ref_src.ReferencedSOPClassUID
                    checked += 1
    assert checked == 10  # 4 in-series + 3 cross-series references, 3 source images
    # no original UID anywhere in the output bytes
    all_out = b"".join(b for s in out_blobs for b in s)
    for uid in study.planted.uids:
        assert uid.encode() in b"".join(b for s in blobs for b in s)
        assert uid.encode() not in all_out


def test_same_input_same_bytes_other_secret_other_uids():
    ds = read(to_bytes(build_phi_dataset()[0]))
    _, one = roundtrip(ds)
    _, two = roundtrip(read(to_bytes(build_phi_dataset()[0])))
    assert one == two
    other, _ = roundtrip(ds, OTHER_SECRET)
    first = read(one)
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert other[kw].value != first[kw].value
    assert other.PatientID != first.PatientID


def test_class_syntax_and_coding_scheme_uids_are_kept():
    ds = build_study().instances[0][1]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", "Chest"
    code.CodingSchemeUID = "2.16.840.1.113883.6.96"
    code.ContextUID = "1.2.840.10008.6.1.2"
    ds.AnatomicRegionSequence = Sequence([code])
    ds.SynchronizationFrameOfReferenceUID = "1.2.840.10008.15.1.1"  # a well-known UID (UTC)

    out = anonymize(ds, SECRET)

    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.MediaStorageSOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert out.file_meta.ImplementationClassUID == ds.file_meta.ImplementationClassUID
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == ds.ReferencedImageSequence[0].ReferencedSOPClassUID
    kept = out.AnatomicRegionSequence[0]
    assert (kept.CodingSchemeUID, kept.ContextUID) == (code.CodingSchemeUID, code.ContextUID)
    assert kept.CodeValue == "T-D3000"
    assert out.SynchronizationFrameOfReferenceUID in UID_dictionary


def test_every_other_uid_is_replaced():
    out = anonymize(read(to_bytes(build_phi_dataset()[0])), SECRET)
    keep = anon._KEEP_UID_TAGS
    for _, elem in walk(out):
        if elem.VR == "UI" and elem.tag not in keep and elem.value:
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            assert all(UID_RE.fullmatch(v) or v in UID_dictionary for v in values), elem.tag


# --------------------------------------------------------------------------
# kept attributes and pixel data
# --------------------------------------------------------------------------
CLINICAL = [
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "KVP",
    "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PhotometricInterpretation",
    "SOPClassUID", "Modality", "Manufacturer", "ImageType",
]  # fmt: skip


@pytest.mark.parametrize("source", ["CT_small.dcm", "MR_small_bigendian.dcm", "phi"])
def test_clinical_attributes_are_byte_identical(source):
    blob = to_bytes(build_phi_dataset()[0]) if source == "phi" else sample_file(source).read_bytes()
    src = read(blob)
    _, out_blob = roundtrip(src)
    out = read(out_blob)  # raw (undecoded) elements on both sides
    compared = 0
    for kw in CLINICAL:
        if kw in src:
            tag = src[kw].tag
            raw_in, raw_out = read(blob).get_item(tag), out.get_item(tag)
            assert raw_out is not None, kw
            assert raw_out.value == raw_in.value, kw
            compared += 1
    assert compared >= 12


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm", "JPEG2000.dcm"],
)
def test_pixel_data_and_transfer_syntax_unchanged(name):
    blob = sample_file(name).read_bytes()
    src = read(blob)
    out, out_blob = roundtrip(src, allow_burned_in=True)
    assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    assert out.PixelData == src.PixelData
    assert out.SOPInstanceUID != src.SOPInstanceUID
    assert out.PatientID != src.PatientID and str(src.PatientID).encode() not in out_blob
    # what the original says about the patient is gone from the bytes
    raw_name = src.get_item(0x00100010).value
    if raw_name and raw_name.strip(b" \x00"):
        assert raw_name.strip(b" \x00") not in out_blob


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_implicit_and_big_endian_inputs_are_anonymized(name):
    src = read(sample_file(name).read_bytes())
    out, blob = roundtrip(src)
    assert out.original_encoding == src.original_encoding
    assert src.StudyInstanceUID.encode() not in blob
    assert out.PatientName.family_name == out.PatientID != src.PatientID
    assert out.StudyDate != src.StudyDate and len(out.StudyDate) == 8
    assert out.PatientIdentityRemoved == "YES"


CHARSET_FILES = sorted(Path(p).name for p in get_charset_files("chr*.dcm"))


def raw_person_names(ds: Dataset):
    """The PN values at every depth as the file encoded them (undecoded bytes)."""
    for tag in ds.keys():
        elem = ds.get_item(tag)
        vr = elem.VR or pydicom.datadict.dictionary_VR(tag)
        if vr == "PN" and elem.is_raw:
            yield from (v.strip(b" ") for v in elem.value.split(b"\\") if v.strip(b" "))
        elif vr == "SQ":
            for item in ds[tag].value:  # items are parsed, their elements stay raw
                yield from raw_person_names(item)


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_non_ascii_charsets_are_anonymized(name):
    blob = sample_file(name).read_bytes()
    names = list(raw_person_names(read(blob)))
    assert names and all(n in blob for n in names)
    assert any(max(n) > 0x7F or b"\x1b" in n for n in names)  # really non-ASCII (8-bit or ISO 2022)
    src = read(blob)

    out, out_blob = roundtrip(src, allow_burned_in=True)

    assert out.get("SpecificCharacterSet") == src.get("SpecificCharacterSet")
    assert [n for n in names if n in out_blob] == []
    for _, elem in walk(out):
        if elem.tag == 0x00100010:
            assert elem.value.family_name.startswith("ANON-")
    assert read(out_blob).PatientIdentityRemoved == "YES"


def test_nested_item_with_its_own_charset():
    src = read(sample_file("chrSQEncoding.dcm").read_bytes())
    raw_item = src.RequestedProcedureCodeSequence[0]
    assert "PatientName" in raw_item
    original = sample_file("chrSQEncoding.dcm").read_bytes()
    jis = "山田".encode("iso2022_jp")[3:-3]  # the JIS X 0208 bytes of the kanji
    assert jis in original
    out, blob = roundtrip(src)
    assert jis not in blob
    item = out.RequestedProcedureCodeSequence[0]
    assert item.SpecificCharacterSet == raw_item.SpecificCharacterSet
    assert item.PatientName.family_name.startswith("ANON-")
    assert "RequestingPhysician" not in out


# --------------------------------------------------------------------------
# burned-in annotation
# --------------------------------------------------------------------------
def test_burned_in_annotation_refused_unless_allowed():
    ds, planted = build_phi_dataset()
    ds.BurnedInAnnotation = "YES"
    assert burned_in_reason(ds)
    with pytest.raises(BurnedInAnnotation) as info:
        anonymize(ds, SECRET)
    err = info.value
    assert isinstance(err, DicomSvcError) and (err.status, err.code) == (422, "burned_in_annotation")
    text = str(err) + err.detail + repr(err.to_json())
    assert not [m for m in planted.markers + planted.uids if m in text]

    out = anonymize(ds, SECRET, allow_burned_in=True)
    assert out.BurnedInAnnotation == "YES" and out.PatientID.startswith("ANON-")


@pytest.mark.parametrize(
    ("modality", "burned", "sop", "refused"),
    [
        ("US", None, None, True),
        ("SC", None, None, True),
        ("OT", None, None, True),
        ("US", "NO", None, False),
        ("CT", None, None, False),
        ("CT", "YES", None, True),
        ("XX", None, "1.2.840.10008.5.1.4.1.1.6.1", True),  # Ultrasound Image Storage
        ("XX", None, "1.2.840.10008.5.1.4.1.1.7", True),  # Secondary Capture Image Storage
        ("XX", None, "1.2.840.10008.5.1.4.1.1.2", False),  # CT Image Storage
    ],
)
def test_burned_in_reason(modality, burned, sop, refused):
    ds = build_study().instances[0][0]
    ds.Modality = modality
    if burned is not None:
        ds.BurnedInAnnotation = burned
    if sop is not None:
        ds.SOPClassUID = sop
    reason = burned_in_reason(ds)
    assert (reason is not None) == refused
    if refused:  # the reason quotes no value of the dataset
        assert ds.SOPClassUID not in reason and ds.PatientID not in reason and "XX" not in reason
        with pytest.raises(BurnedInAnnotation):
            anonymize(ds, SECRET)
    else:
        anonymize(ds, SECRET)


def test_secondary_capture_sample_is_refused_by_default():
    src = read(sample_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    with pytest.raises(BurnedInAnnotation):
        anonymize(src, SECRET)


def test_nothing_is_logged_with_patient_data(caplog):
    ds, planted = build_phi_dataset()
    with caplog.at_level(logging.DEBUG):
        anonymize(read(to_bytes(ds)), SECRET)
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("pydicom"))
    assert not [m for m in planted.markers if m in logged]


def test_secret_must_be_bytes():
    ds = build_study().instances[0][0]
    with pytest.raises(ValueError):
        anonymize(ds, b"")
    with pytest.raises(ValueError):
        anonymize(ds, "text")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# validity: conditional attributes after the profile (PS3.3 Type 1C/2C, Type 2)
# --------------------------------------------------------------------------
def state(ds: Dataset, keyword: str) -> str:
    """"absent", "empty" (no value, or no items) or "value": a failed assertion quotes no value."""
    if keyword not in ds:
        return "absent"
    value = ds[keyword].value
    return "empty" if (len(value) == 0 if ds[keyword].VR == "SQ" else not value) else "value"


def test_conditional_rules_are_data_that_cite_the_standard():
    rules = anon.CONDITIONAL_RULES
    assert len({(r.attribute, r.within) for r in rules}) == len(rules)
    for r in rules:
        assert r.source.startswith("PS3.3 "), hex(r.attribute)
        assert r.type in ("1C", "2C", "2") and r.action in ("X", "Z", "D")
        assert r.condition in ("present", "has_value", "animal", "always")
        assert (r.on != 0) == (r.condition in ("present", "has_value")), hex(r.attribute)
        assert (r.type == "2") == (r.condition == "always"), hex(r.attribute)
    # a "Z" rule that empties an attribute runs before an "X" rule that reads it
    order = [(r.action, r.attribute, r.on) for r in rules]
    for i, (act, attr, _) in enumerate(order):
        if act == "Z":
            assert not any(a == "X" and on == attr for a, _, on in order[:i])


def test_responsible_person_role_goes_with_the_responsible_person():
    """C.7.1.1: Role is 1C, required only if Responsible Person has a value (X in the table)."""
    ds, planted = build_phi_dataset()
    item = ds.ReferencedSeriesSequence[0]  # at depth, too
    item.ResponsiblePerson, item.ResponsiblePersonRole = "DEEP^RESPONSIBLE", "PARENT"
    src = read(to_bytes(ds))
    assert src.ResponsiblePersonRole and src.ResponsiblePerson and src.ResponsibleOrganization

    out, _ = roundtrip(src)

    for where in (out, out.ReferencedSeriesSequence[0]):
        assert state(where, "ResponsiblePerson") == "absent"
        assert state(where, "ResponsiblePersonRole") == "absent"
    assert state(out, "ResponsibleOrganization") == "absent"


def _animal(ds: Dataset) -> Dataset:
    ds.PatientSpeciesDescription = "Canis lupus familiaris"
    ds.PatientBreedDescription = "Beagle"
    ds.PatientBreedCodeSequence = Sequence()
    registration = Dataset()
    registration.BreedRegistrationNumber = "BR-0001"
    registration.BreedRegistryCodeSequence = Sequence([_code("109200", "DCM", "America Kennel Club")])
    ds.BreedRegistrationSequence = Sequence([registration])
    ds.PatientSexNeutered = "ALTERED"
    ds.ResponsiblePersonRole = "OWNER"
    return ds


def test_animal_keeps_responsible_person_and_organization_empty():
    """C.7.1.1: for an animal both are 2C and required: emptied (not removed); the role goes."""
    ds, planted = build_phi_dataset()
    src = read(to_bytes(_animal(ds)))

    out, blob = roundtrip(src)

    assert state(out, "ResponsiblePerson") == "empty" and state(out, "ResponsibleOrganization") == "empty"
    assert state(out, "ResponsiblePersonRole") == "absent"  # Responsible Person has no value now
    assert state(out, "PatientSexNeutered") == "empty"  # 2C in the Patient Study Module; X/Z in the table
    assert out.PatientSpeciesDescription == src.PatientSpeciesDescription
    assert [m for m in planted.markers if m.encode() in blob] == []


def test_ethics_committee_name_goes_with_its_approval_number():
    """C.7.1.3: the name is 1C, required if the approval number (X in the table) is present."""
    src = read(to_bytes(build_phi_dataset()[0]))
    assert src.ClinicalTrialProtocolEthicsCommitteeName and src.ClinicalTrialProtocolEthicsCommitteeApprovalNumber

    out, _ = roundtrip(src)

    assert state(out, "ClinicalTrialProtocolEthicsCommitteeApprovalNumber") == "absent"
    assert state(out, "ClinicalTrialProtocolEthicsCommitteeName") == "absent"
    assert out.ClinicalTrialSponsorName == "ANONYMIZED" and out.ClinicalTrialSubjectID == "ANONYMIZED"


def test_device_alternate_identifier_gets_a_dummy_while_its_type_and_format_stay():
    """10.36: Type and Format are 1C, required if the identifier (Z in the table) has a value."""
    ds = build_study().instances[0][0]
    with_type, without = Dataset(), Dataset()
    for item in (with_type, without):
        item.SeriesInstanceUID = ds.SeriesInstanceUID
        item.DeviceAlternateIdentifier = "DAIMARKERZQ"
    with_type.DeviceAlternateIdentifierType = "BARCODE"
    with_type.DeviceAlternateIdentifierFormat = "GS1"
    # the macro's places in PS3.3 (Transducer Identification Sequence) are removed by the
    # profile: a sequence it keeps stands in for them
    ds.ReferencedSeriesSequence = Sequence([with_type, without])

    out, blob = roundtrip(ds)

    kept, emptied = out.ReferencedSeriesSequence
    assert kept.DeviceAlternateIdentifier == "ANONYMIZED"
    assert (kept.DeviceAlternateIdentifierType, kept.DeviceAlternateIdentifierFormat) == ("BARCODE", "GS1")
    assert state(emptied, "DeviceAlternateIdentifier") == "empty"
    assert b"DAIMARKERZQ" not in blob


def _sr_with_request() -> Dataset:
    """The bundled SR with a Referenced Request Sequence item (Type 2 attributes inside)."""
    ds = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.999.77.1"
    request = Dataset()
    request.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.77.2"
    request.ReferencedStudySequence = Sequence([study])
    request.AccessionNumber = "ACCZQ1"
    request.PlacerOrderNumberImagingServiceRequest = "PLACERZQ1"
    request.FillerOrderNumberImagingServiceRequest = "FILLERZQ1"
    request.RequestedProcedureID = "REQPROCZQ1"
    request.RequestedProcedureDescription = "REQDESCZQ1"
    request.RequestedProcedureCodeSequence = Sequence()
    ds.ReferencedRequestSequence = Sequence([request])
    return ds


def test_type2_attributes_the_table_removes_are_emptied():
    """X, or X/Z on a sequence with items, where the IOD makes the attribute Type 2."""
    sr = _sr_with_request()
    sr.ReferencedStudySequence = Sequence([copy.deepcopy(sr.ReferencedRequestSequence[0].ReferencedStudySequence[0])])
    bare = Dataset()  # a request without the Type 2 attributes: nothing is added
    bare.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.77.3"
    sr.ReferencedRequestSequence.append(bare)
    out, blob = roundtrip(read(to_bytes(sr)))
    request, bare_out = out.ReferencedRequestSequence
    # C.17.2: Type 2 in Referenced Request Sequence items
    assert state(request, "ReferencedStudySequence") == "empty" and state(request, "RequestedProcedureID") == "empty"
    assert state(bare_out, "ReferencedStudySequence") == "absent" and state(bare_out, "RequestedProcedureID") == "absent"
    # C.7.2.1: Type 3 at the top level (General Study Module), "one or more Items": removed
    assert state(out, "ReferencedStudySequence") == "absent"
    assert b"REQPROCZQ1" not in blob

    waveform = read(sample_file("waveform_ecg.dcm").read_bytes())
    assert len(waveform.AcquisitionContextSequence) > 0
    out = anonymize(waveform, SECRET)
    assert state(out, "AcquisitionContextSequence") == "empty"  # C.7.6.14: Type 2, zero or more Items

    ds = build_study().instances[0][0]
    source = Dataset()
    source.SourceNumber = 1
    source.SourceManufacturer = "SOURCEMAKERZQ"
    ds.RecordedSourceSequence = Sequence([source])
    out = anonymize(ds, SECRET)
    assert state(out.RecordedSourceSequence[0], "SourceManufacturer") == "empty"  # C.8.8.22: Type 2
    assert state(anonymize(_with_top_level_source_manufacturer(), SECRET), "SourceManufacturer") == "absent"


def _with_top_level_source_manufacturer() -> Dataset:
    ds = build_study().instances[0][0]
    ds.SourceManufacturer = "SOURCEMAKERZQ"  # outside Recorded Source Sequence: X, as the table says
    return ds


def test_dummies_keep_the_value_multiplicity():
    """C.7.3.1: Operator Identification Sequence Items correspond to Operators' Name values."""
    src = read(to_bytes(build_phi_dataset()[0]))
    assert len(src.OperatorsName) == len(src.OperatorIdentificationSequence) == 2

    out, _ = roundtrip(src)

    assert list(out.OperatorsName) == ["ANONYMIZED", "ANONYMIZED"]
    assert len(out.OperatorIdentificationSequence) == 2


# --------------------------------------------------------------------------
# validity: dciodvfy reports no error the input did not have
# --------------------------------------------------------------------------
DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> set[str]:
    # dciodvfy quotes values in the file's own encoding: read its output as bytes
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, encoding="latin-1", timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert lines, "dciodvfy said nothing at all"
    assert not any("read failed" in line for line in lines), "dciodvfy could not read the whole file"
    # values differ after anonymization: compare the messages without them
    # ("= <value>", and the UIDs some messages end with)
    return {
        re.sub(r"(UID\s+)[0-9.]+", r"\1<uid>", re.sub(r"= <[^>]*>", "= <>", line))
        for line in lines
        if line.startswith("Error")
    }


DCIODVFY_SOURCES = [
    "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "US1_J2KR.dcm",
    "waveform_ecg.dcm", "test-SR.dcm", "reportsi.dcm", "rtplan.dcm", "rtdose.dcm",
    "study", "phi", "phi-animal", "sr-request",
]  # fmt: skip


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
@pytest.mark.parametrize("source", DCIODVFY_SOURCES)
def test_dciodvfy_finds_no_new_error(source, tmp_path):
    if source == "study":
        blob = to_bytes(build_study().instances[1][2])
    elif source == "phi":  # Responsible Person and Role, clinical trial subject, operators...
        blob = to_bytes(build_phi_dataset()[0])
    elif source == "phi-animal":
        blob = to_bytes(_animal(build_phi_dataset()[0]))
    elif source == "sr-request":
        blob = to_bytes(_sr_with_request())
    else:
        blob = sample_file(source).read_bytes()
    src_path, out_path = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src_path.write_bytes(blob)
    out_path.write_bytes(to_bytes(anonymize(read(blob), SECRET, allow_burned_in=True)))
    before, after = dciodvfy_errors(src_path), dciodvfy_errors(out_path)
    assert after - before == set()
