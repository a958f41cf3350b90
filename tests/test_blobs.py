"""Blob storage: temp space, atomic rename, limits, clean-up."""

import io

import pytest

from dicomfiles import drops_pages
from dicomsvc.storage import blobs as blobs_module
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


def test_blobs_committed_at_sync_are_placed_together_by_it(tmp_path, monkeypatch):
    """Issue 12: a group commit's blobs are all created before the first is synced, every data
    sync comes before the first rename, and the folder is synced after the last; until then
    nothing is at its key."""
    import os

    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    ids = ["AbCdEfGhIjKlMnOpQrStUv", "AbCdEfGhIjKlMnOpQrStUw"]
    temps = {blobs.key(i, x): blobs.write_temp(i.encode() + x.encode(), "." + x) for i in ids for x in ("dcm", "png")}
    blobs.commit_at_sync([(temp, key) for key, temp in temps.items()])
    assert all(temp.exists() and not blobs.path(key).exists() for key, temp in temps.items())
    calls = []

    def recorded(name, real, what):
        def call(*args):
            result = real(*args)
            calls.append((name, what(*args)))
            return result

        return call

    def named(fd):
        return os.readlink(f"/proc/self/fd/{fd}")

    monkeypatch.setattr(os, "fdatasync", recorded("fdatasync", os.fdatasync, named))
    monkeypatch.setattr(os, "fsync", recorded("fsync", os.fsync, named))
    monkeypatch.setattr(os, "replace", recorded("rename", os.replace, lambda src, dst: str(dst)))
    blobs.sync()
    assert [c[0] for c in calls] == ["fdatasync"] * 4 + ["rename"] * 4 + ["fsync"] * 2  # the new folder, and the root
    assert sorted(c[1] for c in calls if c[0] == "fdatasync") == sorted(str(t) for t in temps.values())
    assert {c[1] for c in calls if c[0] == "fsync"} == {str(blobs.root / "Ab"), str(blobs.root)}
    assert all(blobs.path(key).read_bytes() == key.split("/")[1].replace(".", "").encode() for key in temps)
    assert blobs.pending == {} and list(blobs.tmp.iterdir()) == []


def test_blobs_a_failed_sync_left_pending_are_removed_by_remove(tmp_path, monkeypatch):
    """A sync that fails (the disk, EIO) leaves what it has not placed pending; the caller's
    ``remove`` of the keys removes those temporaries and what was placed alike."""
    import errno
    import os

    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    keys = [blobs.key(i, "dcm") for i in ("AbCdEfGhIjKlMnOpQrStUv", "AbCdEfGhIjKlMnOpQrStUw", "AbCdEfGhIjKlMnOpQrStUx")]
    blobs.commit_at_sync([(blobs.write_temp(b"x" * 100, ".dcm"), key) for key in keys])
    real_replace, renamed = os.replace, []

    def replace(src, dst):
        if renamed:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)
        renamed.append(dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        blobs.sync()
    assert blobs.path(keys[0]).exists() and list(blobs.pending) == keys[1:]
    blobs.remove(*keys)
    assert not any(blobs.path(key).exists() for key in keys)
    assert blobs.pending == {} and list(blobs.tmp.iterdir()) == []


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


def _task(blobs: BlobStore, tag: str, *names: str) -> list[str]:
    """What a worker task does: place a blob per name under ``tag``, then end; their keys."""
    blobs_module.begin_task(tag)
    keys = []
    for name in names:
        key = blobs.key(name, "dcm")
        blobs.commit(blobs.write_temp(b"x" * 100), key)
        keys.append(key)
    blobs_module.end_task()
    return keys


def test_a_process_notes_placed_blobs_in_one_note_no_file_made_or_removed_per_task(tmp_path, monkeypatch):
    """Issue 12: a note made and removed per task is a freed inode per ingest, and every file
    created in the next minutes (on ext4 without a journal) pays for each one."""
    monkeypatch.setattr(blobs_module, "_notes", {})
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    first = _task(blobs, "wAAAA.tAAAA", "AbCdEfGhIjKlMnOpQrStUv", "AbCdEfGhIjKlMnOpQrStUw")
    (note,) = blobs.tmp.iterdir()
    inode = note.stat().st_ino
    second = _task(blobs, "wAAAA.tBBBB", "XyCdEfGhIjKlMnOpQrStUv")
    assert list(blobs.tmp.iterdir()) == [note] and note.stat().st_ino == inode  # the same file, kept
    assert note.name == "wAAAA.placed"  # named after the worker, the first part of its tasks' tags
    assert blobs.task_leftovers("wAAAA.tAAAA") == ([note], first)  # when its worker dies: its keys, the note
    assert blobs.task_leftovers("wAAAA.tBBBB") == ([note], second)
    assert blobs.task_leftovers("wCCCC.tCCCC") == ([], [])  # another worker's task that placed nothing
    blobs_module.drop_notes()  # the worker leaves
    assert list(blobs.tmp.iterdir()) == []


def test_a_note_past_its_limit_is_cut_back_when_its_task_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(blobs_module, "_notes", {})
    monkeypatch.setattr(blobs_module, "NOTE_LIMIT", 200)
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    sizes = []
    for n in range(12):
        _task(blobs, f"t{n:04d}", f"Ab{n:020d}")
        (note,) = blobs.tmp.iterdir()
        sizes.append(note.stat().st_size)
    assert max(sizes) <= 200 + len("t0000 Ab/") + 20 + len(".dcm\n")  # one line past the limit at most
    assert 0 in sizes  # cut back (to empty) at least once
    blobs_module.drop_notes()


def test_a_task_that_left_temporaries_and_placed_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(blobs_module, "_notes", {})
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    blobs_module.begin_task("tDDDD")
    temp = blobs.write_temp(b"half")
    # the worker dies here: no end_task
    blobs_module.begin_task(None)
    assert blobs.task_leftovers("tDDDD") == ([temp], [])


def test_a_worker_that_dies_in_a_task_that_placed_nothing_leaves_no_note(tmp_path, monkeypatch):
    """Tags begin with the worker's name (dicomsvc.workers), which names its note: the note of a
    dead worker goes, whatever the task it died in had placed."""
    monkeypatch.setattr(blobs_module, "_notes", {})
    blobs = BlobStore(tmp_path / "blobs")
    blobs.open()
    done = _task(blobs, "wAAAA.t1111", "AbCdEfGhIjKlMnOpQrStUv")
    kept = blobs_module._notes
    monkeypatch.setattr(blobs_module, "_notes", {})  # another worker process, alive: another note
    other = _task(blobs, "wBBBB.t3333", "XyCdEfGhIjKlMnOpQrStUv")
    monkeypatch.setattr(blobs_module, "_notes", kept)  # back in wAAAA
    assert sorted(p.name for p in blobs.tmp.iterdir()) == ["wAAAA.placed", "wBBBB.placed"]
    blobs_module.begin_task("wAAAA.t2222")  # the next task of wAAAA, which dies before it places
    assert blobs.task_leftovers("wAAAA.t2222") == ([blobs.tmp / "wAAAA.placed"], [])
    assert blobs.task_leftovers("wAAAA.t1111") == ([blobs.tmp / "wAAAA.placed"], done)
    assert blobs.task_leftovers("wBBBB.t3333") == ([blobs.tmp / "wBBBB.placed"], other)
    blobs_module.begin_task(None)
    monkeypatch.setattr(blobs_module, "_notes", {})  # (both notes' processes gone)


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
    blobs.sync_soon(dcm)  # as ingest does: its writeback started early, the commit's fdatasync after
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
