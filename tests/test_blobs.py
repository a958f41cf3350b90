"""Blob storage: temp space, atomic rename, limits, clean-up."""

import io

import pytest

from dicomfiles import drops_pages
from dicomsvc.storage.blobs import FANOUT, BlobStore
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


def test_the_service_store_makes_every_folder_when_it_opens(tmp_path):
    """DICOMSVC_BLOB_FOLDERS=start (the default): every folder a blob id's first two characters
    (shortuuid's alphabet) can name exists once the store is open; a missing one (removed by
    hand) is made again at the next start, or by the blob that needs it."""
    import shortuuid

    from dicomsvc.config import Config

    assert FANOUT == shortuuid.get_alphabet()
    config = Config.from_env({"DICOMSVC_DATA_DIR": str(tmp_path / "data")})
    assert config.blob_folders == "start"
    blobs = BlobStore.of(config)
    blobs.open()
    folders = {p.name for p in blobs.root.iterdir() if p != blobs.tmp}
    assert folders == {a + b for a in FANOUT for b in FANOUT}
    (blobs.root / "Ab").rmdir()
    assert BlobStore.of(config).make_folders() == 1  # the next start
    (blobs.root / "Ab").rmdir()
    blobs.commit(blobs.write_temp(b"x"), blobs.key("AbCdEfGhIjKlMnOpQrStUv", "dcm"))
    assert blobs.read_bytes(blobs.root / "Ab" / "AbCdEfGhIjKlMnOpQrStUv.dcm") == b"x"
    with pytest.raises(ValueError, match="DICOMSVC_BLOB_FOLDERS"):
        Config.from_env({"DICOMSVC_BLOB_FOLDERS": "eager"})


@pytest.mark.local_blobs_only("plants orphan files in the local folder (tests/test_objects.py sweeps the bucket)")
def test_blobs_no_record_points_at_are_swept_at_start(config, data_dir):
    import os
    import time

    from starlette.testclient import TestClient

    from app import create_app
    from dicomfiles import sample_file

    with TestClient(create_app(config)) as client:
        kept = client.post(
            "/dicom", content=sample_file("CT_small.dcm").read_bytes(), headers={"content-type": "application/dicom"}
        ).json()["id"]
        client.get("/image", params={"id": kept, "window": "40,400"})  # a cached rendering too
    blobs = BlobStore(data_dir / "blobs")
    orphan = "Zz" + "q" * 20  # as left by a crash between a worker's rename and its commit
    (blobs.root / "Zz").mkdir(exist_ok=True)
    old = time.time() - 7200  # older than DICOMSVC_SWEEP_GRACE_SECONDS (an hour)
    young = time.time() - 600  # orphaned too, but maybe another replica's blob about to be committed
    (blobs.root / "Zz" / ("Zz" + "y" * 20 + ".dcm")).write_bytes(b"x")
    os.utime(blobs.root / "Zz" / ("Zz" + "y" * 20 + ".dcm"), (young, young))
    for name in (f"{orphan}.dcm", f"{orphan}.png"):
        (blobs.root / "Zz" / name).write_bytes(b"x")
        os.utime(blobs.root / "Zz" / name, (old, old))
    (blobs.renderings(orphan)).mkdir()
    os.utime(blobs.renderings(orphan), (old, old))
    fresh = blobs.root / "Zz" / ("Zz" + "f" * 20 + ".dcm")  # newer than the start: maybe in flight
    with TestClient(create_app(config)) as client:
        fresh.write_bytes(b"y")
        deadline = time.monotonic() + 10
        while (blobs.root / "Zz" / f"{orphan}.dcm").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/image", params={"id": kept}).status_code == 200
    assert not list((blobs.root / "Zz").glob(f"{orphan}*"))
    assert fresh.exists()
    assert (blobs.root / "Zz" / ("Zz" + "y" * 20 + ".dcm")).exists()  # within the grace period
    assert len(list(data_dir.glob(f"blobs/*/{kept}*"))) == 3  # .dcm, .png, .renderings


def test_the_ids_one_store_hands_out_share_their_folder(tmp_path):
    """A group commit's blobs land in one fan-out folder (one directory fsync for them all);
    the ids stay shortuuids, distinct, and another store starts a folder of its own."""
    store = BlobStore(tmp_path / "blobs")
    ids = [store.new_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(len(i) == 22 and set(i) <= set(FANOUT) for i in ids)
    assert {i[:2] for i in ids} == {ids[0][:2]}
    assert {BlobStore.key(i, "dcm").split("/")[0] for i in ids} == {ids[0][:2]}
    firsts = {BlobStore(tmp_path / "blobs").new_id()[:2] for _ in range(50)}
    assert len(firsts) > 10  # the folder is drawn per store: stores spread over the fan-out


def test_read_if_cached_reads_what_the_page_cache_holds_and_never_waits(tmp_path, monkeypatch):
    import os

    from dicomsvc.storage import blobs

    path = tmp_path / "x.png"
    path.write_bytes(b"png bytes" * 100)  # just written: in the page cache
    assert blobs.read_if_cached(path) == b"png bytes" * 100
    with pytest.raises(FileNotFoundError):
        blobs.read_if_cached(tmp_path / "gone.png")

    def not_cached(fd, buffers, offset, flags):
        assert flags & os.RWF_NOWAIT
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "preadv", not_cached)
    assert blobs.read_if_cached(path) is None  # the caller reads it in an I/O thread
    monkeypatch.undo()
    monkeypatch.setattr(blobs, "CACHED_READ_MAX", 10)
    assert blobs.read_if_cached(path) is None  # too large for the event loop


def test_a_placed_dicom_blob_leaves_the_page_cache_its_rendering_stays(tmp_path):
    from dicomsvc.storage.blobs import read_if_cached

    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    if not drops_pages(blobs.tmp):
        pytest.skip("this file system keeps pages on POSIX_FADV_DONTNEED (tmpfs)")
    dcm, png = blobs.write_temp(b"d" * 200_000, ".dcm"), blobs.write_temp(b"p" * 50_000, ".png")
    assert read_if_cached(dcm) is not None and read_if_cached(png) is not None  # just written
    blobs.sync_soon(dcm)  # as ingest does: the data sync started early, waited for by the commit
    dcm_key, png_key = blobs.key("AbCdEfGhIjKlMnOpQrStUv", "dcm"), blobs.key("AbCdEfGhIjKlMnOpQrStUv", "png")
    blobs.commit_all([(dcm, dcm_key), (png, png_key)])
    assert read_if_cached(blobs.path(dcm_key)) is None  # synced, then its pages dropped
    assert blobs.path(dcm_key).read_bytes() == b"d" * 200_000  # from the disk, whole
    assert read_if_cached(blobs.path(png_key)) == b"p" * 50_000  # GET /image reads it from memory


def test_drop_cached_is_advice_only(tmp_path):
    from dicomsvc.storage import blobs

    blobs.drop_cached(tmp_path / "gone.dcm")  # nothing to open: nothing happens
    path = tmp_path / "dirty.dcm"
    path.write_bytes(b"x" * 4096)
    blobs.drop_cached(path)  # not synced: the kernel keeps what it must write
    assert path.read_bytes() == b"x" * 4096
