"""A dataset export's files, written by a worker a page of instances at a time (``dicomsvc.exports``).

For each instance: ``<study>/<series>/<sop>.dcm`` (the stored file, decrypted), ``.npy`` (the
pixel data as pydicom decodes it, every frame; ``rescale``: the modality LUT applied, float32:
``imaging.arrays``) and ``.png`` (the frame-1 rendering made at ingest), and one manifest row:
the relative paths, the UIDs and what stacking slices needs -- (0020,0032) Image Position
(Patient), (0020,0037) Image Orientation (Patient), (0028,0030) Pixel Spacing, (0018,0050) Slice
Thickness -- as the stored values (multiple values '\\'-joined, as DICOM encodes them).
"""

import shutil
from pathlib import Path

from .config import Config
from .datasets import GEOMETRY
from .dicom.parse import read
from .errors import DicomSvcError
from .imaging import arrays
from .storage.blobs import BlobStore



def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def export_chunk(config: Config, folder: str, rows: list[dict], include: list[str], rescale: bool) -> list[dict]:
    """Write the files of ``rows`` (``storage.datasets.export_page`` rows) under ``folder``; per
    instance a manifest entry: {"paths": {kind: relative path}, "values": {column: text}} or
    {"error": code} when it could not be exported (its files are then left out)."""
    blobs = BlobStore.of(config)
    out = []
    for row in rows:
        relative = f"{row['study_instance_uid']}/{row['series_instance_uid']}/{row['sop_instance_uid']}"
        target = Path(folder) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        written: dict[str, str] = {}
        try:
            reader = blobs.stored(row["dcm_blob"])
            parsed = read(reader)
            values = {name: _text(parsed.ds.get(name)) for name in GEOMETRY}
            if "dicom" in include:
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
        uids = {"StudyInstanceUID": row["study_instance_uid"], "SeriesInstanceUID": row["series_instance_uid"],
                "SOPInstanceUID": row["sop_instance_uid"], "Modality": row["modality"] or ""}  # fmt: skip
        out.append({"paths": written, "values": uids | values})
    return out
