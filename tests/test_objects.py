"""S3-compatible blob storage (DICOMSVC_BLOB_URL; dicomsvc.storage.objects, .blobcache, the S3
side of .blobs) against a real SeaweedFS (tests/seaweed.py): uploads (conditional PUT, multipart
streamed with bounded memory), the read-through cache (miss, eviction), deletes, encryption in the
bucket, task leftovers, the orphan sweep, and an object store that fails (503, start-up)."""

import base64
import dataclasses
import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

import indexdb
import seaweed
from app import create_app
from dicomfiles import ENCRYPTED_SUITE, SUITE_KEY, make_ct
from dicomsvc.config import Config
from dicomsvc.errors import StorageUnavailable
from dicomsvc.service import StartupError
from dicomsvc.storage.blobcache import BlobCache
from dicomsvc.storage.blobs import BlobStore
from dicomsvc.storage.crypt import Keyring, read_sealed
from dicomsvc.storage.objects import ObjectStore
from phi_fixture import build_phi_dataset, to_bytes


@pytest.fixture(scope="module")
def weed(s3_server):
    """The session's SeaweedFS when the suite runs on S3, else one for this module."""
    if s3_server is not None:
        yield s3_server
        return
    with seaweed.running() as server:
        yield server


@pytest.fixture(scope="module")
def bucket(weed) -> str:
    return weed.new_bucket()


@pytest.fixture(autouse=True)
def credentials(weed, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", weed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", weed.secret_key)


def s3_config(tmp_path: Path, weed, bucket: str, **extra: str) -> Config:
    (tmp_path / "import").mkdir(exist_ok=True)
    env = {
        "DICOMSVC_DATA_DIR": str(tmp_path / "data"),
        "DICOMSVC_IMPORT_ROOT": str(tmp_path / "import"),
        "DICOMSVC_WORKERS": "0",
        **{k: v for k, v in weed.env(bucket, f"p{uuid.uuid4().hex[:12]}").items() if k.startswith("DICOMSVC_")},
        **extra,
    }
    return Config.from_env(env)


def prefix_of(config: Config) -> str:
    return config.blob_url.split("/", 3)[3]


def ct_bytes(**elements) -> bytes:
    buf = io.BytesIO()
    make_ct(np.arange(40 * 50, dtype=np.int16).reshape(40, 50), **elements).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def post(client, data: bytes):
    return client.post("/dicom", content=data, headers={"content-type": "application/dicom"})


def test_settings_and_the_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    config = Config.from_env({"DICOMSVC_DATA_DIR": str(tmp_path), "DICOMSVC_BLOB_URL": "s3://b/some/prefix/",
                              "DICOMSVC_S3_ENDPOINT": "http://127.0.0.1:9/"})  # fmt: skip
    assert (config.blob_url, config.s3_endpoint, config.blob_dir) == ("s3://b/some/prefix", "http://127.0.0.1:9", tmp_path / "blobs")
    store = ObjectStore.of(config)
    assert (store.bucket, store.prefix) == ("b", "some/prefix")
    import logging

    with caplog.at_level(logging.INFO, logger="dicomsvc"):
        config.log(logging.getLogger("dicomsvc"))
    assert "s3://b/some/prefix" in caplog.text and "s3cr3t-value" not in caplog.text
    for bad in ("b/p", "s3://", "http://b/p"):
        with pytest.raises(ValueError, match="DICOMSVC_BLOB_URL"):
            Config.from_env({"DICOMSVC_DATA_DIR": str(tmp_path), "DICOMSVC_BLOB_URL": bad})
    with pytest.raises(ValueError, match="DICOMSVC_S3_MULTIPART_BYTES"):
        Config.from_env({"DICOMSVC_DATA_DIR": str(tmp_path), "DICOMSVC_S3_MULTIPART_BYTES": "1000"})
    local = {"DICOMSVC_DATA_DIR": str(tmp_path), "DICOMSVC_BLOB_URL": ""}  # (set: the S3 suite's conftest adds none)
    cached = Config.from_env({**local, "DICOMSVC_BLOB_CACHE_DIR": str(tmp_path / "c")})
    assert cached.blob_dir == tmp_path / "blobs"  # the cache folder matters only with S3
    assert Config.from_env(local).blob_url == ""


def test_ingest_puts_objects_and_a_cache_miss_fetches_them(tmp_path, weed, bucket):
    config = s3_config(tmp_path, weed, bucket, DICOMSVC_READ_CACHE_BYTES="0")  # every /image read from the blob
    prefix = prefix_of(config)
    data = ct_bytes()
    with TestClient(create_app(config)) as client:
        created = post(client, data)
        assert created.status_code == 201, created.text
        iid = created.json()["id"]
        keys = weed.keys(bucket, prefix + "/")
        assert keys == [f"{prefix}/{iid[:2]}/{iid}.dcm", f"{prefix}/{iid[:2]}/{iid}.png"]
        body = weed.client().get_object(Bucket=bucket, Key=f"{prefix}/{iid[:2]}/{iid}.dcm")["Body"].read()
        if ENCRYPTED_SUITE:  # the object is the sealed file (its id: the key below the prefix)
            (tmp_path / "object").write_bytes(body)
            body = read_sealed(tmp_path / "object", Keyring((SUITE_KEY,)), f"{iid[:2]}/{iid}.dcm")
        assert body == data
        image = client.get(f"/image?id={iid}").content
        # the local copies are a cache: gone, they are fetched again
        for name in ("dcm", "png"):
            (config.blob_dir / iid[:2] / f"{iid}.{name}").unlink()
        assert client.get(f"/dicom/{iid}/file").content == data
        assert (config.blob_dir / iid[:2] / f"{iid}.dcm").exists()
        assert client.get(f"/image?id={iid}").content == image
        assert (config.blob_dir / iid[:2] / f"{iid}.png").exists()
        # a non-default rendering goes to the bucket too
        jpeg = client.get(f"/image?id={iid}&window=40,400&format=jpeg")
        assert jpeg.status_code == 200
        rendered = [k for k in weed.keys(bucket, prefix + "/") if ".renderings/" in k]
        assert len(rendered) == 1
        # delete: objects and copies gone
        assert client.delete(f"/dicom/{iid}").status_code in (200, 204)
        assert weed.keys(bucket, prefix + "/") == []
        assert not (config.blob_dir / iid[:2] / f"{iid}.dcm").exists()


def test_encrypted_objects_in_the_bucket_hold_no_patient_data(tmp_path, weed, bucket):
    key = base64.b64encode(bytes(range(32))).decode()
    config = s3_config(tmp_path, weed, bucket, DICOMSVC_ENCRYPTION_KEY=key, DICOMSVC_ENCRYPTION_CHUNK_BYTES="4096")
    ds, planted = build_phi_dataset()
    phi = to_bytes(ds)
    assert all(m.encode() in phi for m in planted.markers) and b"DICM" in phi
    with TestClient(create_app(config)) as client:
        iid = post(client, phi).json()["id"]
        ct = post(client, ct_bytes()).json()["id"]
        assert client.get(f"/image?id={ct}&window=40,400&format=jpeg").status_code == 200
        objects = weed.keys(bucket, prefix_of(config) + "/")
        assert len(objects) >= 4 and any(".renderings/" in k for k in objects)
        s3 = weed.client()
        for name in objects:
            raw = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
            assert raw.startswith(b"DSVCRYPT"), name
            assert b"DICM" not in raw and b"\x89PNG" not in raw and b"\xff\xd8\xff" not in raw
            assert not any(m.encode() in raw for m in planted.markers)
        (config.blob_dir / iid[:2] / f"{iid}.dcm").unlink()  # read back through a cache miss
        assert client.get(f"/dicom/{iid}/file").content == phi


MEMORY_CHILD = r"""
import os, sys
from pathlib import Path
from dicomsvc.storage.objects import ObjectStore
url, endpoint, path = sys.argv[1:4]
store = ObjectStore(url, endpoint, "us-east-1", 8 << 20, 60)
store.put_bytes("warm", b"x")  # the client and its runtime made before the baseline
store.delete("warm")
def peak():  # VmHWM: this process's own peak (ru_maxrss would start from the parent's, kept across exec)
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
base = peak()
store.put_file("big.dcm", Path(path))
up = peak() - base
with open(path + ".back", "wb") as out:
    size = store.get_file("big.dcm", out)
print(up, peak() - base, size)
"""


def test_a_large_blob_streams_in_parts_with_bounded_memory(tmp_path, weed, bucket):
    """120 MB up (multipart, 8 MiB parts, two in flight) and down (streamed to a file) in a fresh
    process: its peak RSS grows by far less than the object's size (measured: +33 MiB over 23)."""
    big = tmp_path / "big"
    size = 120 * 1024 * 1024
    with open(big, "wb") as out:
        chunk = os.urandom(1 << 20)
        for i in range(120):
            out.write(chunk[:-4] + i.to_bytes(4, "big"))
    prefix = f"p{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": weed.access_key, "AWS_SECRET_ACCESS_KEY": weed.secret_key}
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, f"s3://{bucket}/{prefix}", weed.endpoint, str(big)],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    grew_up, grew_down, got = map(int, done.stdout.split())
    assert got == size
    assert grew_up < 64 * 1024 * 1024 and grew_down < 64 * 1024 * 1024, (grew_up, grew_down)
    assert (tmp_path / "big.back").read_bytes() == big.read_bytes()
    uploads = weed.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert not [u for u in uploads if u["Key"].startswith(prefix)]
    head = weed.client().head_object(Bucket=bucket, Key=f"{prefix}/big.dcm")
    assert head["ContentLength"] == size and "-" in head["ETag"]  # a multipart ETag: <md5 of md5s>-<parts>


def test_a_small_blob_is_a_conditional_put(tmp_path, weed, bucket):
    store = ObjectStore(f"s3://{bucket}/c{uuid.uuid4().hex[:8]}", weed.endpoint, "us-east-1", 8 << 20, 30)
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    store.put_file("aa/x.dcm", first)
    with pytest.raises(StorageUnavailable):  # If-None-Match: * -- never over an existing object
        store.put_file("aa/x.dcm", second)
    with open(tmp_path / "back", "wb") as out:
        store.get_file("aa/x.dcm", out)
    assert (tmp_path / "back").read_bytes() == b"first"
    with pytest.raises(FileNotFoundError), open(tmp_path / "none", "wb") as out:
        store.get_file("aa/missing.dcm", out)
    store.delete("aa/x.dcm", "aa/missing.dcm")  # a missing object is no error
    assert not store.exists("aa/x.dcm")


def test_the_cache_evicts_the_least_recently_used(tmp_path):
    root = tmp_path / "blobs"
    (root / ".tmp").mkdir(parents=True)
    cache = BlobCache(root, max_bytes=10_000)
    paths = []
    for i in range(5):
        path = root / "ab" / f"id{i}.dcm"
        cache.fill(path, root / ".tmp", lambda out: out.write(b"x" * 3000))
        paths.append(path)
        os.utime(path, (1000 + i, 1000 + i))  # a clear order
        if i == 1:
            assert cache.hit(paths[0])  # id0 used again: now the most recent
    left = sorted(p.name for p in (root / "ab").iterdir())
    total = sum(p.stat().st_size for p in (root / "ab").iterdir())
    assert total <= 10_000
    assert "id4.dcm" in left and "id1.dcm" not in left
    assert list((root / ".tmp").iterdir()) == []  # nothing half-fetched left
    assert not cache.hit(root / "ab" / "nope.dcm")


def test_task_leftovers_are_removed_from_the_bucket(tmp_path, weed, bucket):
    config = s3_config(tmp_path, weed, bucket)
    prefix = prefix_of(config)
    with TestClient(create_app(config)) as client:
        svc = client.app.state.svc
        blobs = BlobStore.of(config)
        from dicomsvc.storage import blobs as blobs_module

        blobs_module.begin_task("t1")
        try:
            temp = blobs.write_temp(b"orphan", ".dcm")
            blobs.commit_all([(temp, BlobStore.key("Zzorphanid", "dcm"))])  # uploaded, then the worker "dies"
        finally:
            blobs_module.begin_task(None)
        assert weed.keys(bucket, prefix + "/") == [f"{prefix}/Zz/Zzorphanid.dcm"]
        client.portal.call(svc.remove_task_leftovers, "t1")
        assert weed.keys(bucket, prefix + "/") == []


def test_a_missing_bucket_stops_start_up(tmp_path, weed):
    config = s3_config(tmp_path, weed, "nosuchbucket" + uuid.uuid4().hex[:6])
    with pytest.raises(StartupError, match="does not exist"):
        with TestClient(create_app(config)):
            pass


def test_an_object_store_that_fails_is_503_and_leaves_nothing(tmp_path):
    """Its own SeaweedFS, stopped mid-test: ingest, reads of uncached blobs and /readyz answer
    503 (never 500), no row is left; back up, all is served."""
    with seaweed.running() as weed:
        bucket = weed.new_bucket()
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = weed.access_key, weed.secret_key
        config = s3_config(tmp_path, weed, bucket, DICOMSVC_S3_TIMEOUT="3")
        with TestClient(create_app(config)) as client:
            iid = post(client, ct_bytes()).json()["id"]
            assert client.get("/readyz").status_code == 200
            (config.blob_dir / iid[:2] / f"{iid}.dcm").unlink()
            seaweed._stop(weed.process, grace=0.5)
            refused = post(client, ct_bytes())
            assert refused.status_code == 503 and refused.json()["error"] == "storage_unavailable"
            missing = client.get(f"/dicom/{iid}/file")
            assert missing.status_code == 503 and missing.json()["error"] == "storage_unavailable"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and not ready.json()["checks"]["object_store"]["ok"]
            with indexdb.index(config) as db:
                assert db.execute("SELECT COUNT(*) FROM dicom").fetchone()[0] == 1
            assert [p for p in (config.blob_dir / ".tmp").iterdir() if not p.name.endswith(".placed")] == []
    with pytest.raises(StartupError, match="does not answer"):
        with TestClient(create_app(config)):
            pass


def _plant(weed, bucket: str, prefix: str, names: list[str]) -> None:
    s3 = weed.client()
    for name in names:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=b"x")


def _swept(client, weed, bucket: str, prefix: str, gone: str, seconds: float = 20) -> list[str]:
    deadline = time.monotonic() + seconds
    while any(gone in k for k in weed.keys(bucket, prefix + "/")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return weed.keys(bucket, prefix + "/")


def test_the_sweep_removes_objects_no_row_points_at_past_the_grace(tmp_path, weed, bucket):
    config = s3_config(tmp_path, weed, bucket)
    prefix = prefix_of(config)
    with TestClient(create_app(config)) as client:
        kept = post(client, ct_bytes()).json()["id"]
        client.get(f"/image?id={kept}&window=40,400")  # a rendering in the bucket too
    orphan = "Zz" + "q" * 20  # as left by a replica that died between its upload and its commit
    _plant(weed, bucket, prefix, [f"Zz/{orphan}.dcm", f"Zz/{orphan}.png", f"Zz/{orphan}.renderings/k.png"])
    time.sleep(2.5)  # older than the start margin
    with TestClient(create_app(config)):  # the default grace (an hour): young orphans stay
        time.sleep(1.0)
    assert len([k for k in weed.keys(bucket, prefix + "/") if orphan in k]) == 3
    graceless = dataclasses.replace(config, sweep_grace_seconds=0)
    with TestClient(create_app(graceless)) as client:
        left = _swept(client, weed, bucket, prefix, orphan)
        assert client.get(f"/image?id={kept}").status_code == 200
    assert not [k for k in left if orphan in k]
    assert sum(kept in k for k in left) == 3  # .dcm, .png and its rendering


@pytest.mark.postgres_only
def test_one_replica_sweeps_at_a_time(tmp_path, weed, bucket):
    """While another replica holds the sweep lock (a PostgreSQL advisory lock), a start-up sweep
    is skipped; once released, the next one sweeps."""
    import psycopg

    from dicomsvc.storage.sweeplock import SWEEP_LOCK

    config = dataclasses.replace(s3_config(tmp_path, weed, bucket), sweep_grace_seconds=0)
    prefix = prefix_of(config)
    orphan = "Zy" + "q" * 20
    _plant(weed, bucket, prefix, [f"Zy/{orphan}.dcm"])
    time.sleep(2.5)
    with psycopg.connect(config.database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (SWEEP_LOCK,))
        with TestClient(create_app(config)):
            time.sleep(2.0)
        assert weed.keys(bucket, prefix + "/") == [f"{prefix}/Zy/{orphan}.dcm"]
        other.execute("SELECT pg_advisory_unlock(%s)", (SWEEP_LOCK,))
    with TestClient(create_app(config)) as client:
        assert _swept(client, weed, bucket, prefix, orphan) == []


def test_a_job_spool_lives_in_the_bucket_for_any_replica(tmp_path, weed, bucket, monkeypatch):
    """A ZIP past DICOMSVC_SYNC_LIMIT becomes a job: its spool is uploaded before the job row is
    written; run where the local copy is missing (another replica), the job fetches it from the
    bucket; done, the spool is gone from the bucket too."""
    import zipfile

    config = s3_config(tmp_path, weed, bucket, DICOMSVC_SYNC_LIMIT="2")
    prefix = prefix_of(config)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i in range(3):
            archive.writestr(f"f{i}.dcm", ct_bytes())
    pushed: list[list[str]] = []
    push = BlobStore.push_spool

    def push_then_forget(self, folder):  # as if the job were run by a replica without the files
        push(self, folder)
        pushed.append(weed.keys(bucket, f"{prefix}/spool/"))
        for path in folder.iterdir():
            path.unlink()

    monkeypatch.setattr(BlobStore, "push_spool", push_then_forget)
    with TestClient(create_app(config)) as client:
        answer = client.post("/dicom", content=buf.getvalue(), headers={"content-type": "application/zip"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job"]
        deadline = time.monotonic() + 60
        while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "done", job
        assert [r["status"] for r in job["results"]] == ["created"] * 3, job
    assert len(pushed) == 1 and len(pushed[0]) == 1, pushed  # the spooled ZIP, before the job row
    assert weed.keys(bucket, f"{prefix}/spool/") == []


def test_the_sweep_removes_job_spools_no_job_holds_past_the_grace(tmp_path, weed, bucket):
    """A request that uploaded its job's spool and failed before the job's row was written leaves
    ``spool/<folder>/...`` in the bucket: the start-up sweep removes it once past the grace period,
    never a spool a job holds (nor a young one)."""
    import asyncio

    from dicomsvc import sweep

    config = dataclasses.replace(s3_config(tmp_path, weed, bucket), sweep_grace_seconds=0)
    prefix = prefix_of(config)
    with TestClient(create_app(config)) as client:
        svc = client.app.state.svc
        # planted after the start: the app's own start-up sweep (started - START_MARGIN) never takes
        # them, even when a loaded machine takes longer than that margin to start the app
        _plant(weed, bucket, prefix, ["spool/orphan1/upload.zip", "spool/orphan1/part2", "spool/held1/upload.zip"])

        with indexdb.index(config) as db:  # a job holding that spool, in a state no runner takes up
            db.execute("INSERT INTO job (id, status, total, spool_dir, created_at) VALUES (?, 'held', 0, ?, ?)",
                       ("J" * 22, str(config.spool_dir / "held1"), "2026-01-01T00:00:00.000+00:00"))  # fmt: skip
        young = client.portal.call(sweep.sweep_orphans, svc, time.time() - 3600)
        assert young == 0 and len(weed.keys(bucket, f"{prefix}/spool/")) == 3
        client.portal.call(asyncio.sleep, 1.1)  # past Last-Modified's one-second resolution
        assert client.portal.call(sweep.sweep_orphans, svc, time.time()) >= 1
        assert weed.keys(bucket, f"{prefix}/spool/") == [f"{prefix}/spool/held1/upload.zip"]


def _members(data: bytes) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _exported(client, dataset_csv: bytes) -> str:
    """Post a CSV over the stored studies, export it, wait for its job: the job id."""
    body = client.post("/datasets", files={"csv": ("c.csv", dataset_csv, "text/csv")}, data={"key": "PatientID"}).json()
    answer = client.post(f"/datasets/{body['id']}/export", json={"include": ["npy", "png", "dicom"]})
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 60  # a liveness bound
    while (job := client.get(answer.json()["status_url"]).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "done", job
    return job["id"]


def test_an_export_result_is_kept_in_the_bucket_for_any_replica(tmp_path, weed, bucket):
    """With S3 a finished export's files go to the bucket (sealed when encrypting): a replica
    without the local folder fetches them and sends the same ZIP; expired, they go from the bucket
    too (then 410)."""
    from dicomsvc import exports

    config = s3_config(tmp_path, weed, bucket)
    prefix = prefix_of(config)
    with TestClient(create_app(config)) as client:
        assert post(client, ct_bytes(PatientID="PHI90QX")).status_code == 201
        job_id = _exported(client, b"PatientID,Age\nPHI90QX,5\n")
        first = client.get(f"/jobs/{job_id}/result")
        assert first.status_code == 200, first.text
        objects = weed.keys(bucket, f"{prefix}/exports/{job_id}/")
        assert len(objects) == 4 and f"{prefix}/exports/{job_id}/manifest.csv" in objects  # manifest + 3 files
        if config.encryption_keys:  # sealed: the manifest's patient key is not readable in the bucket
            raw = weed.client().get_object(Bucket=bucket, Key=f"{prefix}/exports/{job_id}/manifest.csv")["Body"].read()
            assert b"PHI90QX" not in raw
        BlobStore.remove_tree(exports.result_dir(config, job_id))  # as on a replica that did not run it
        again = client.get(f"/jobs/{job_id}/result")
        assert again.status_code == 200 and _members(again.content) == _members(first.content)
        assert client.portal.call(exports.expire, client.app.state.svc, time.time() + config.export_result_seconds + 1) == 1
        assert weed.keys(bucket, f"{prefix}/exports/") == []
        assert client.get(f"/jobs/{job_id}/result").status_code == 410


@pytest.mark.postgres_only
def test_an_export_run_by_one_replica_is_sent_by_the_other(tmp_path, weed, bucket):
    """Two replicas (one PostgreSQL, one bucket): whichever runs the export, both send its ZIP;
    after it expired, neither does (410)."""
    from dicomsvc import exports

    url = indexdb.database_env(tmp_path / "a")["DICOMSVC_DATABASE_URL"]
    shared = {k: v for k, v in weed.env(bucket, f"p{uuid.uuid4().hex[:12]}").items() if k.startswith("DICOMSVC_")}
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(Config.from_env({"DICOMSVC_DATA_DIR": str(tmp_path / name), "DICOMSVC_IMPORT_ROOT": str(tmp_path),
                                        "DICOMSVC_WORKERS": "0", "DICOMSVC_DATABASE_URL": url, **shared}))  # fmt: skip
    with TestClient(create_app(configs[0])) as a, TestClient(create_app(configs[1])) as b:
        assert post(a, ct_bytes(PatientID="PID-7")).status_code == 201
        job_id = _exported(a, b"PatientID,Age\nPID-7,5\n")
        ran_here = [c for c in configs if exports.result_dir(c, job_id).exists()]
        assert len(ran_here) == 1  # one replica ran it
        zips = [client.get(f"/jobs/{job_id}/result") for client in (a, b)]
        assert [z.status_code for z in zips] == [200, 200] and _members(zips[0].content) == _members(zips[1].content)
        later = time.time() + configs[0].export_result_seconds + 1
        for client in (a, b):
            client.portal.call(exports.expire, client.app.state.svc, later)
        assert [client.get(f"/jobs/{job_id}/result").status_code for client in (a, b)] == [410, 410]
