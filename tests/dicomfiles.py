"""Test data: pydicom's bundled files and datasets built here."""

import ctypes
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomsvc.storage.blobs import NOTE_SUFFIX


def sample_file(name: str) -> Path:
    """A file shipped with pydicom (test_files or charset_files); never downloaded."""
    found = get_testdata_file(name, download=False)
    if found is None:
        matches = get_charset_files(name)
        found = matches[0] if matches else None
    if found is None:
        pytest.fail(f"pydicom does not ship {name}")
    return Path(found)


def make_ct(
    pixels: np.ndarray | None = None,
    *,
    sop_uid: str | None = None,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = (40.0, 400.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    **elements,
) -> Dataset:
    """A small, valid CT-like dataset (explicit VR little endian, int16)."""
    if pixels is None:
        rng = np.random.default_rng(7)
        pixels = rng.integers(0, 2000, size=(32, 48), dtype=np.int16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-001"
    ds.StudyDate = "20240102"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def blob_files(data_dir: Path) -> list[Path]:
    """Every file in blob storage, temp space included, but the notes of placed blobs that
    live worker processes keep there (``notes``: one per worker, bookkeeping, not data)."""
    root = data_dir / "blobs"
    kept = set(notes(data_dir))
    return sorted(p for p in root.rglob("*") if p.is_file() and p not in kept) if root.exists() else []


def notes(data_dir: Path) -> list[Path]:
    """The notes of placed blobs in temp space (dicomsvc.storage.blobs: one per worker process
    that placed a blob, removed when the worker leaves or dies)."""
    return sorted((data_dir / "blobs" / ".tmp").glob(f"*{NOTE_SUFFIX}"))


ENCRYPTED_SUITE = os.environ.get("DICOMSVC_TEST_ENCRYPTION") == "1"
SUITE_KEY = bytes(range(32))  # the master key conftest gives every Config when ENCRYPTED_SUITE


def unlink_blob(path: Path) -> None:
    """Remove a stored blob as a DELETE does: its file, and its object when the suite runs with S3
    blobs (DICOMSVC_TEST_S3=1: the file is only a cached copy, fetched again when missing)."""
    from dicomsvc.config import Config
    from dicomsvc.storage.blobs import BlobStore

    path.unlink(missing_ok=True)
    root = next(p for p in path.parents if p.name == "blobs")
    blobs = BlobStore.of(Config.from_env({"DICOMSVC_DATA_DIR": str(root.parent)}))
    if blobs.remote is not None:
        blobs.remote.delete(path.relative_to(root).as_posix())


def blob_plaintext(path: Path) -> bytes:
    """A stored blob's bytes as a reader sees them: decrypted when it was sealed (the suite run
    with DICOMSVC_TEST_ENCRYPTION=1; the object id is the path below ``<data>/blobs``)."""
    data = path.read_bytes()
    if not data.startswith(b"DSVCRYPT"):
        return data
    from dicomsvc.storage.crypt import Keyring, read_sealed

    root = next(p for p in path.parents if p.name == "blobs")
    return read_sealed(path, Keyring((SUITE_KEY,)), path.relative_to(root).as_posix())


def counting_reads(monkeypatch) -> list[int]:
    """Sizes of every read() on files opened from now on (to prove what was not read)."""
    reads: list[int] = []
    real_open = open

    def counting_open(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        original = handle.read
        handle.read = lambda n=-1: reads.append(n) or original(n)
        return handle

    monkeypatch.setattr("builtins.open", counting_open)
    return reads


AT_FDCWD, RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically (a folder and a link, say)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def swapping(a: Path, b: Path) -> tuple[threading.Event, threading.Thread]:
    """A thread swapping ``a`` and ``b`` until the returned event is set; skips the test
    where renameat2(RENAME_EXCHANGE) is missing. Join the thread after setting the event."""
    try:
        exchange(a, b)
        exchange(a, b)
    except (OSError, AttributeError):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            exchange(a, b)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return stop, thread


def temporary_files_on_a_full_disk(monkeypatch) -> None:
    """From now on, writing to a ``tempfile.TemporaryFile`` fails with ENOSPC (a full disk)."""
    import errno
    import tempfile

    real = tempfile.TemporaryFile

    class Full:
        def __init__(self, *args, **kwargs):
            self._file = real(*args, **kwargs)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._file, name)

    monkeypatch.setattr(tempfile, "TemporaryFile", Full)


def drops_pages(folder) -> bool:
    """Whether this file system drops a synced file's pages on POSIX_FADV_DONTNEED (a disk
    file system does; tmpfs keeps them: its pages are the file). The drop is advice, now and
    then not taken at once on a disk too, so three probes: one dropped is enough."""
    from dicomsvc.storage import blobs

    for n in range(3):
        probe = folder / f"probe-{n}"
        probe.write_bytes(b"p" * 65536)
        blobs.sync_data(probe)
        blobs.drop_cached(probe)
        dropped = blobs.read_if_cached(probe) is None
        probe.unlink()
        if dropped:
            return True
    return False

