"""A dataset export's files, written by a worker a page of instances at a time (``dicomsvc.exports``).

For each instance: ``<study>/<series>/<sop>.dcm`` (the stored file, decrypted), ``.npy`` (the
pixel data as pydicom decodes it, every frame; ``rescale``: the modality LUT applied, float32:
``imaging.arrays``) and ``.png`` (the frame-1 rendering made at ingest), and one manifest row:
the relative paths, the UIDs and what stacking slices needs -- (0020,0032) Image Position
(Patient), (0020,0037) Image Orientation (Patient), (0028,0030) Pixel Spacing, (0018,0050) Slice
Thickness -- as the stored values (multiple values '\\'-joined, as DICOM encodes them).

Anonymized on the way out (``secret``: the export asked ``anonymize`` of instances stored as
they came): each such instance goes through ``dicom.anonymize`` (PS3.15 Annex E Basic Profile,
Retain Longitudinal Temporal Information with Modified Dates) with the service's secret, so its
UIDs and pseudonyms are the ones the anonymizer gives everywhere else (a study anonymized at
ingest and one anonymized here get the same (0020,000D)); the folders and the manifest use the
anonymized UIDs. The profile alters no pixel: ``.npy`` and ``.png`` are the stored pixels. An
instance whose pixels may show patient data ((0028,0301) Burned In Annotation, or a modality or
SOP class that usually does: ``burned_in_reason``) is left out unless ``allow_burned_in``.
Instances stored anonymized already are exported as they are (never anonymized twice).
"""

import hashlib
import re
import shutil
from pathlib import Path

from pydicom import dcmread

from .config import Config
from .datasets import GEOMETRY
from .dicom.parse import read
from .errors import DicomSvcError, InvalidDicom
from .imaging import arrays
from .storage.blobs import BlobStore

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 §9.1: digit components separated by dots


def _segment(uid: str) -> str:
    """A UID as a folder or file name: itself when it is a valid UID (PS3.5 §9.1: digits and dots,
    at most 64 characters); otherwise -- the stored value is whatever the file held, an ingest only
    warns -- ``uid-`` and a hash of it, so that no value can climb out of the export's folder
    (``..``, ``/``) or name a member oddly."""
    if len(uid) <= 64 and _UID.fullmatch(uid):
        return uid
    return "uid-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _anonymized(blobs: BlobStore, key: str, secret: bytes, allow_burned_in: bool):
    """The stored instance ``key`` de-identified (``dicom.anonymize``); BurnedInAnnotation (422)
    when its pixels may show patient data and ``allow_burned_in`` is false."""
    from .dicom.anonymize import anonymize  # the profile table loads on first use

    with blobs.open_file(blobs.path(key)) as src:
        ds = dcmread(src, force=True)
        try:
            return anonymize(ds, secret, allow_burned_in=allow_burned_in)
        except DicomSvcError:
            raise
        except Exception as exc:  # pydicom on a value it cannot convert, say (never the value itself)
            raise InvalidDicom(f"the instance could not be anonymized ({type(exc).__name__})") from None


def _pseudonym(kind: str, key: str, secret: bytes, study_uid: str) -> str:
    """The CSV key as the anonymizer gives it (as ``datasets.create`` stores it when anonymizing):
    (0010,0020) Patient ID -> ``pseudonym``; (0020,000D) Study Instance UID -> the anonymized
    study's UID (``new_uid`` of it); (0008,0050) Accession Number is emptied by the profile (Z),
    so its rows are keyed by the anonymized Study Instance UID too."""
    from .dicom.anonymize import pseudonym

    return pseudonym(secret, key) if kind == "PatientID" else study_uid


def export_chunk(
    config: Config, folder: str, rows: list[dict], include: list[str], rescale: bool,
    secret: bytes | None = None, allow_burned_in: bool = False, key_kind: str = "PatientID",
) -> list[dict]:  # fmt: skip
    """Write the files of ``rows`` (``storage.datasets.export_page`` rows) under ``folder``; per
    instance a manifest entry: {"paths": {kind: relative path}, "values": {column: text}} or
    {"error": code} when it could not be exported (its files are then left out). ``secret``:
    instances not stored anonymized are anonymized on the way out (the module's docstring), and
    their entry's "key" is the pseudonym of the CSV key (``key_kind`` of ``datasets.KEYS``)."""
    blobs = BlobStore.of(config)
    out = []
    for row in rows:
        uids = (row["study_instance_uid"], row["series_instance_uid"], row["sop_instance_uid"])
        clean = None  # the anonymized data set, when this instance is anonymized here
        written: dict[str, str] = {}
        try:
            if secret is not None and not row.get("anonymized"):
                clean = _anonymized(blobs, row["dcm_blob"], secret, allow_burned_in)
                uids = (str(clean.StudyInstanceUID), str(clean.SeriesInstanceUID), str(clean.SOPInstanceUID))
            relative = "/".join(_segment(uid) for uid in uids)
            target = Path(folder) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            reader = blobs.stored(row["dcm_blob"])
            parsed = read(reader)
            values = {name: _text((clean if clean is not None else parsed.ds).get(name)) for name in GEOMETRY}
            if "dicom" in include and clean is not None:
                try:
                    clean.save_as(f"{target}.dcm", enforce_file_format=True)
                except OSError:  # the disk, not the data
                    raise
                except Exception as exc:  # what pydicom reads but will not write
                    raise InvalidDicom(f"the anonymized copy could not be written ({type(exc).__name__})") from None
                written["dicom"] = f"{relative}.dcm"
            elif "dicom" in include:
                with blobs.open_file(blobs.path(row["dcm_blob"])) as src, open(f"{target}.dcm", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                written["dicom"] = f"{relative}.dcm"
            if "npy" in include and row["has_pixels"]:
                _, chunks = arrays.npy_stream(reader, parsed, None, rescale)
                with open(f"{target}.npy", "wb") as dst:
                    for chunk in chunks:
                        dst.write(chunk)
                written["npy"] = f"{relative}.npy"
            if "png" in include and row["png_blob"]:
                with blobs.open_file(blobs.path(row["png_blob"])) as src, open(f"{target}.png", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                written["png"] = f"{relative}.png"
        except (DicomSvcError, FileNotFoundError) as exc:  # gone meanwhile, undecodable pixels: this one only
            for path in written.values():
                (Path(folder) / path).unlink(missing_ok=True)
            out.append({"error": getattr(exc, "code", "not_found")})
            continue
        names = {"StudyInstanceUID": uids[0], "SeriesInstanceUID": uids[1], "SOPInstanceUID": uids[2],
                 "Modality": row["modality"] or ""}  # fmt: skip
        if clean is not None and not row.get("pseudonymous"):  # an anonymized dataset's key is one already
            names["key"] = _pseudonym(key_kind, row["key_value"], secret, uids[0])
        out.append({"paths": written, "values": names | values})
    return out
