"""A multi-series study built here (tests/dicomfiles.py's make_ct), for the DICOMweb tests."""

from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from dicomfiles import make_ct

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}


def make_study(
    series: tuple[tuple[str, int], ...] = (("CT", 3), ("MR", 2)), seed: int = 0, **study: object
) -> list[Dataset]:
    """One dataset per instance: a study of ``series`` (modality, instance count), with the
    attributes QIDO-RS matches and returns; ``study`` overrides study/patient elements."""
    rng = np.random.default_rng(seed)
    attributes = {
        "StudyInstanceUID": generate_uid(),
        "PatientName": "Doe^Jane",
        "PatientID": f"PID-{seed}",
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
        "StudyDate": "20240102",
        "StudyTime": "101500",
        "AccessionNumber": f"ACC{seed}",
        "ReferringPhysicianName": "Ref^Doctor",
        "StudyID": f"S{seed}",
        "StudyDescription": "Chest and head",
    } | study
    out = []
    for number, (modality, count) in enumerate(series, 1):
        series_uid = generate_uid()
        for instance in range(1, count + 1):
            ds = make_ct(
                rng.integers(0, 2000, size=(16, 24), dtype=np.int16),
                SeriesInstanceUID=series_uid,
                Modality=modality,
                SeriesNumber=number,
                SeriesDescription=f"{modality} series {number}",
                InstanceNumber=instance,
                PerformedProcedureStepStartDate="20240102",
                PerformedProcedureStepStartTime="101000",
                **attributes,
            )
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES.get(modality, CTImageStorage)
            out.append(ds)
    return out


def to_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def post_all(client, datasets: list[Dataset]) -> list[str]:
    """Store each dataset with POST /dicom; their ids."""
    ids = []
    for ds in datasets:
        answer = client.post("/dicom", content=to_bytes(ds), headers={"content-type": "application/dicom"})
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids
