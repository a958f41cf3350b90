"""Blob storage: temp space, atomic rename, limits, clean-up."""

import io

import pytest

from dicomsvc.blobs import BlobStore
from dicomsvc.errors import TooLarge


def test_spool_commit_remove(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    temp = blobs.spool(io.BytesIO(b"x" * 3000), max_bytes=10_000)
    assert temp.parent == blobs.tmp and temp.read_bytes() == b"x" * 3000
    key = blobs.key("AbCdEfGhIjKlMnOpQrStUv", "dcm")
    assert key == "Ab/AbCdEfGhIjKlMnOpQrStUv.dcm"
    blobs.commit(temp, key)
    assert not temp.exists() and blobs.path(key).read_bytes() == b"x" * 3000
    blobs.remove(key, None)
    assert not blobs.path(key).exists()


def test_spool_over_the_limit_leaves_nothing(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    with pytest.raises(TooLarge):
        blobs.spool(io.BytesIO(b"x" * 5000), max_bytes=4096)
    assert list(blobs.tmp.iterdir()) == []


def test_open_clears_leftover_temp_files(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    blobs.write_temp(b"half", ".png")
    BlobStore(tmp_path / "blobs").open()  # the next start
    assert list(blobs.tmp.iterdir()) == []
