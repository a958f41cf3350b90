"""What is made from a stored instance on request: renderings, arrays, DICOM JSON, bulk data.

Plain synchronous code, run in the workers (``dicomsvc.service.Service.cpu``) or an
I/O thread; the counterpart of ``ingest`` on the read side. Each reads the stored
DICOM blob, never the whole pixel data: only the frames asked for are decoded.
"""

import os
from collections.abc import Iterator
from pathlib import Path

from .config import Config
from .dicom import dicomjson
from .dicom.parse import read
from .imaging import arrays, renderings
from .storage.blobs import BlobStore


def render_and_keep(config: Config, dcm_blob: str, params: renderings.RenderParams, cached: Path) -> bytes:
    """Render from the stored DICOM and keep the result: temp name, then rename."""
    blobs = BlobStore(config.blob_dir)
    path = blobs.path(dcm_blob)
    body = renderings.render(path, read(path), params)
    temp = blobs.write_temp(body, f".{params.format}")
    cached.parent.mkdir(exist_ok=True)
    os.replace(temp, cached)
    return body


def write_npy(config: Config, dcm_blob: str, frame: int | None, rescale: bool) -> Path:
    """The pixel data as a temporary ``.npy`` file, a frame at a time; the caller removes it."""
    blobs = BlobStore(config.blob_dir)
    path = blobs.path(dcm_blob)
    _, chunks = arrays.npy_stream(path, read(path), frame, rescale)
    temp, out = blobs.create_temp(".npy")
    try:
        with out:
            for chunk in chunks:
                out.write(chunk)
    except BaseException:
        blobs.discard(temp)
        raise
    return temp


def dicom_json(config: Config, dcm_blob: str, bulk_base: str) -> dict:
    """The DICOM JSON model (PS3.18 Annex F), bulk data as ``bulk_base`` + element path."""
    path = BlobStore(config.blob_dir).path(dcm_blob)
    parsed = read(path)
    return dicomjson.to_dicom_json(parsed.ds, lambda element: bulk_base + element, pixel=parsed.pixel)


def bulk(path: Path, element_path: str) -> tuple[int, Iterator[bytes]]:
    """One binary value of the stored file: its length and its chunks."""
    return dicomjson.bulk_stream(path, read(path), element_path)
