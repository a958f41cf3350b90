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
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from dicomfiles import sample_file
from dicomsvc.dicom import anonymize as anon
from dicomsvc.dicom.anonymize import BurnedInAnnotation, anonymize, burned_in_reason, profile_table
from dicomsvc.errors import DicomSvcError
from phi_fixture import TRANSFER_SYNTAXES, build_phi_dataset, build_study, to_bytes

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
    a Type 3 sequence). Dates and times follow the modified dates option instead.
    """
    src = read(to_bytes(build_phi_dataset()[0]))
    out = anonymize(src, SECRET)
    table = profile_table()
    seen = set()
    for elem in src:
        action = table.action(elem.tag)
        if action is None or elem.tag.is_private or elem.VR in ("DA", "DT", "TM"):
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
# validity: dciodvfy reports no error the input did not have
# --------------------------------------------------------------------------
DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert lines, "dciodvfy said nothing at all"
    # values differ after anonymization: compare the messages without them
    return {re.sub(r"= <[^>]*>", "= <>", line) for line in lines if line.startswith("Error")}


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
@pytest.mark.parametrize("source", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "study", "phi"])
def test_dciodvfy_finds_no_new_error(source, tmp_path):
    if source == "study":
        blob = to_bytes(build_study().instances[1][2])
    elif source == "phi":
        blob = to_bytes(build_phi_dataset()[0])
    else:
        blob = sample_file(source).read_bytes()
    src_path, out_path = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src_path.write_bytes(blob)
    out_path.write_bytes(to_bytes(anonymize(read(blob), SECRET, allow_burned_in=True)))
    before, after = dciodvfy_errors(src_path), dciodvfy_errors(out_path)
    assert after - before == set()
