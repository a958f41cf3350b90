"""Test data for the anonymizer: datasets with patient data planted everywhere.

``build_phi_dataset()`` plants unique marker strings as PHI at every depth -- the
top level, nested sequences (standard and private), private elements and their
creators, overlays, curves, the icon image and the file meta header -- plus
distinctive dates and UIDs. ``build_study()`` makes a 2-series x 3-instance study
of one patient whose instances refer to each other.

Markers look like ``PHI07ZQ``: letters and digits (valid in CS, AE and PN), short
enough for SH, and no marker is a substring of another. Tests first check that each
marker is in the input bytes, so a passthrough cannot go unnoticed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
)

# an org root of our own for the planted UIDs: every one of them must vanish
UID_ROOT = "1.2.826.0.1.3680043.10.999."
CODE_VALUE_KEPT = "C0DEKEEP"  # a code (not PHI): kept where the profile keeps codes


@dataclass
class Planted:
    """What was planted where: the test greps the output bytes for all of it."""

    markers: list[str] = field(default_factory=list)  # text that must vanish
    dates: list[str] = field(default_factory=list)  # DA/DT strings that must not survive as they are
    uids: list[str] = field(default_factory=list)  # instance/series/study/... UIDs that must vanish

    def marker(self) -> str:
        m = f"PHI{len(self.markers):02d}ZQ"
        self.markers.append(m)
        return m

    def uid(self) -> str:
        u = f"{UID_ROOT}{len(self.uids) + 1}.{7919 * (len(self.uids) + 3)}"
        self.uids.append(u)
        return u

    def date(self, value: str) -> str:
        self.dates.append(value)
        return value


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue = value
    c.CodingSchemeDesignator = scheme
    c.CodeMeaning = meaning
    return c


def _private_block(ds: Dataset, p: Planted, group: int = 0x0009) -> None:
    """A private creator, a private text element and a private sequence with PHI inside."""
    block = ds.private_block(group, f"{p.marker()} CREATOR", create=True)
    block.add_new(0x01, "LO", p.marker())
    block.add_new(0x02, "PN", f"{p.marker()}^PRIVATE")
    inner = Dataset()
    inner.PatientName = f"{p.marker()}^INNER"
    inner.add_new(0x00100020, "LO", p.marker())
    inner_block = inner.private_block(0x0011, f"{p.marker()} INNER", create=True)
    inner_block.add_new(0x10, "LO", p.marker())
    block.add_new(0x03, "SQ", Sequence([inner]))


def build_phi_dataset(
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    charset: str | None = None,
    rows: int = 8,
    cols: int = 8,
) -> tuple[Dataset, Planted]:
    """One CT-like instance carrying planted PHI everywhere; returns it and what was planted."""
    p = Planted()
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = p.uid()
    ds.StudyInstanceUID = p.uid()
    ds.SeriesInstanceUID = p.uid()
    ds.FrameOfReferenceUID = p.uid()
    ds.InstanceCreatorUID = p.uid()
    ds.Modality = "CT"
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "ACME"

    # patient
    ds.PatientName = f"{p.marker()}^{p.marker()}"
    ds.PatientID = p.marker()
    ds.IssuerOfPatientID = p.marker()
    ds.OtherPatientIDs = p.marker()
    ds.PatientBirthDate = p.date("19230417")
    ds.PatientBirthTime = "101010"
    ds.PatientSex = "F"
    ds.PatientAge = "091Y"
    ds.PatientAddress = f"{p.marker()} Main Street"
    ds.PatientTelephoneNumbers = p.marker()
    ds.PatientMotherBirthName = f"{p.marker()}^MOTHER"
    ds.PatientBirthName = f"{p.marker()}^BIRTH"
    ds.MedicalRecordLocator = p.marker()
    ds.Occupation = p.marker()
    ds.AdditionalPatientHistory = f"history {p.marker()}"
    ds.PatientComments = f"comment {p.marker()}"
    ds.EthnicGroup = p.marker()
    ds.ResponsiblePerson = f"{p.marker()}^RESPONSIBLE"
    ds.ResponsiblePersonRole = "GUARDIAN"  # 1C: needs Responsible Person with a value
    ds.ResponsibleOrganization = f"{p.marker()} Foundation"
    # clinical trial subject
    ds.ClinicalTrialSponsorName = p.marker()
    ds.ClinicalTrialProtocolID = p.marker()
    ds.ClinicalTrialProtocolName = p.marker()
    ds.ClinicalTrialSiteID = p.marker()
    ds.ClinicalTrialSiteName = p.marker()
    ds.ClinicalTrialSubjectID = p.marker()
    ds.ClinicalTrialProtocolEthicsCommitteeName = f"{p.marker()} IRB"  # 1C: needs the approval number
    ds.ClinicalTrialProtocolEthicsCommitteeApprovalNumber = p.marker()
    # study, series, equipment
    ds.StudyDate = p.date("19870314")
    ds.SeriesDate = p.date("19870315")
    ds.AcquisitionDate = p.date("19870316")
    ds.ContentDate = p.date("19870317")
    ds.InstanceCreationDate = p.date("19870318")
    ds.AcquisitionDateTime = p.date("19870319093015.123456+0100")
    ds.DateOfLastCalibration = [p.date("19861201"), p.date("19870102")]  # multi-valued DA
    ds.StudyTime = "093015.123"
    ds.SeriesTime = "093016"
    ds.AccessionNumber = p.marker()
    ds.StudyID = p.marker()
    ds.StudyDescription = f"study of {p.marker()}"
    ds.SeriesDescription = f"series of {p.marker()}"
    ds.ImageComments = f"seen by {p.marker()}"
    ds.ProtocolName = f"protocol {p.marker()}"
    ds.PerformedProcedureStepDescription = p.marker()
    ds.PerformedProcedureStepID = p.marker()
    ds.DerivationDescription = p.marker()
    ds.AdmittingDiagnosesDescription = p.marker()
    ds.InstitutionName = f"{p.marker()} Hospital"
    ds.InstitutionAddress = f"{p.marker()} Hospital Road"
    ds.InstitutionalDepartmentName = p.marker()
    ds.StationName = p.marker()
    ds.DeviceSerialNumber = p.marker()
    ds.ReferringPhysicianName = f"{p.marker()}^REFERRER"
    ds.ReferringPhysicianAddress = p.marker()
    ds.PerformingPhysicianName = f"{p.marker()}^PERFORMER"
    ds.OperatorsName = [f"{p.marker()}^OPERATOR", f"{p.marker()}^SECOND"]
    operators = []
    for _ in range(2):  # one item per value of Operators' Name, in order
        operator = Dataset()
        operator.PersonIdentificationCodeSequence = Sequence([_code(p.marker(), "99IDS", p.marker())])
        operator.InstitutionName = f"{p.marker()} Hospital"
        operators.append(operator)
    ds.OperatorIdentificationSequence = Sequence(operators)
    ds.PhysiciansOfRecord = f"{p.marker()}^RECORD"
    ds.NameOfPhysiciansReadingStudy = f"{p.marker()}^READER"
    ds.RequestingPhysician = f"{p.marker()}^REQUESTER"
    ds.ContrastBolusAgent = p.marker()
    ds.DeidentificationMethod = p.marker()  # a stale marker: replaced, not kept

    # nested: sequences the profile removes or empties
    other = Dataset()
    other.PatientID = p.marker()
    other.IssuerOfPatientID = p.marker()
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    req = Dataset()
    req.RequestedProcedureID = p.marker()
    req.ScheduledProcedureStepID = p.marker()
    req.ScheduledProcedureStepDescription = p.marker()
    req.ScheduledProtocolCodeSequence = Sequence([_code("P1", "99LOCAL", p.marker())])
    ds.RequestAttributesSequence = Sequence([req])
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref_study.ReferencedSOPInstanceUID = p.uid()
    ds.ReferencedStudySequence = Sequence([ref_study])

    # nested: SR-style content, two levels deep, text and names inside
    leaf = Dataset()
    leaf.RelationshipType = "CONTAINS"
    leaf.ValueType = "TEXT"
    leaf.ConceptNameCodeSequence = Sequence([_code(CODE_VALUE_KEPT, "99LOCAL", "Finding")])
    leaf.TextValue = f"the patient {p.marker()} said"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "CONTAINER"
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence([leaf])
    pname = Dataset()
    pname.RelationshipType = "HAS OBS CONTEXT"
    pname.ValueType = "PNAME"
    pname.PersonName = f"{p.marker()}^OBSERVER"
    when = Dataset()
    when.RelationshipType = "HAS OBS CONTEXT"
    when.ValueType = "DATETIME"
    when.DateTime = p.date("19870320101112")
    ds.ContentSequence = Sequence([item, pname, when])
    ds.PersonIdentificationCodeSequence = Sequence([_code(p.marker(), "99IDS", p.marker())])

    # nested: a sequence the profile keeps, with PHI, dates, UIDs and private data inside
    ref_inst = Dataset()
    ref_inst.ReferencedSOPClassUID = CTImageStorage
    ref_inst.ReferencedSOPInstanceUID = p.uid()
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = p.uid()
    ref_series.SeriesDate = p.date("19870213")
    ref_series.ReferencedInstanceSequence = Sequence([ref_inst])
    ref_series.PerformingPhysicianName = f"{p.marker()}^DEEP"
    _private_block(ref_series, p, 0x0029)
    ds.ReferencedSeriesSequence = Sequence([ref_series])
    ds.ProcedureCodeSequence = Sequence([_code(CODE_VALUE_KEPT, "99LOCAL", "CT CHEST")])

    # private elements at the top level (two creators)
    _private_block(ds, p, 0x0009)
    _private_block(ds, p, 0x0019)

    # overlays, curves, icon
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000022, "LO", p.marker())  # Overlay Description
    ds.add_new(0x60001500, "LO", p.marker())  # Overlay Label
    ds.add_new(0x60003000, "OW", (p.marker() + "X").encode())  # Overlay Data (even length)
    ds.add_new(0x50002500, "LO", p.marker())  # Curve Label
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = (p.marker() + "X").encode()[:8].ljust(4, b"\0")
    icon.add_new(0x00204000, "LT", p.marker())
    ds.IconImageSequence = Sequence([icon])

    # kept clinical attributes (checked byte for byte)
    ds.ImagePositionPatient = [-125.25, -130.5, 47.75]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.48828125, 0.48828125]
    ds.SliceThickness = 1.25
    ds.KVP = 120
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    # image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    px = (np.arange(rows * cols, dtype=np.uint16) * 37 % 4096).reshape(rows, cols)
    ds.PixelData = px.astype(">u2" if transfer_syntax == ExplicitVRBigEndian else "<u2").tobytes()

    # file meta: AE titles and private information
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = transfer_syntax
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "PHIFIXTURE"
    fm.SourceApplicationEntityTitle = p.marker()
    fm.SendingApplicationEntityTitle = p.marker()
    fm.ReceivingApplicationEntityTitle = p.marker()
    fm.PrivateInformationCreatorUID = p.uid()
    fm.PrivateInformation = (p.marker() + "X").encode()
    ds.file_meta = fm
    return ds, p


def to_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file (preamble, meta, dataset) in its transfer syntax."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------
# a study: 2 series x 3 instances of one patient, with references between them
# --------------------------------------------------------------------------
@dataclass
class Study:
    instances: list[list[Dataset]]  # [series][instance]
    planted: Planted


def build_study(*, patient_id: str = "PAT4711ZQ", study_date: str = "20190605", seed: int = 0) -> Study:
    p = Planted()
    p.markers.append(patient_id)
    study_uid, frame_uid = p.uid(), p.uid()
    series_uids = [p.uid(), p.uid()]
    sop_uids = [[p.uid() for _ in range(3)] for _ in range(2)]
    rng = np.random.default_rng(seed)
    series = []
    for s in range(2):
        instances = []
        for i in range(3):
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uids[s][i]
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uids[s]
            ds.FrameOfReferenceUID = frame_uid
            ds.Modality = "CT"
            ds.PatientName = "STUDYPATIENT^ZQ"
            ds.PatientID = patient_id
            ds.PatientBirthDate = "19500101"
            ds.PatientSex = "M"
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = p.date(study_date)
            ds.StudyTime = "101500"
            ds.AcquisitionDateTime = p.date(study_date + "101500")
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [0.0, 0.0, -2.5 * i]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [0.7, 0.7]
            ds.SliceThickness = 2.5
            refs = []
            if i > 0:  # the previous slice of the same series
                refs.append((s, i - 1))
            if s == 1:  # the same slice of the first series
                refs.append((0, i))
            items = []
            for rs, ri in refs:
                r = Dataset()
                r.ReferencedSOPClassUID = CTImageStorage
                r.ReferencedSOPInstanceUID = sop_uids[rs][ri]
                items.append(r)
            if items:
                ds.ReferencedImageSequence = Sequence(items)
            if s == 1:
                src = Dataset()
                src.ReferencedSOPClassUID = CTImageStorage
                src.ReferencedSOPInstanceUID = sop_uids[0][i]
                ds.SourceImageSequence = Sequence([src])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ds.Columns = 4
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.PixelData = rng.integers(-1000, 1000, size=(4, 4), dtype=np.int16).astype("<i2").tobytes()
            fm = FileMetaDataset()
            fm.MediaStorageSOPClassUID = CTImageStorage
            fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            fm.TransferSyntaxUID = ExplicitVRLittleEndian
            fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = fm
            instances.append(ds)
        series.append(instances)
    return Study(series, p)


TRANSFER_SYNTAXES = {
    "explicit-le": ExplicitVRLittleEndian,
    "implicit-le": ImplicitVRLittleEndian,
    "explicit-be": ExplicitVRBigEndian,
}
