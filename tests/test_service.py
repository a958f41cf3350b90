"""The service as it runs by default: CPU work in worker processes."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dicomfiles import blob_files, make_ct, notes, save
from dicomsvc.errors import InvalidDicom


def test_storyline_in_worker_processes(process_client, put, data_dir):
    name = put("MR_small.dcm")
    created = process_client.post("/dicom", json={"path": name})
    assert created.status_code == 201
    instance_id = created.json()["id"]
    assert process_client.get("/image", params={"id": instance_id}).headers["content-type"] == "image/png"
    tags = process_client.get("/tags", params={"id": instance_id}).json()["tags"]
    assert any(r["Name"] == "PatientName" for r in tags)
    assert process_client.post("/dicom", json={"path": name}).json() == {"id": instance_id}


def test_errors_cross_the_process_boundary(process_client, import_root):
    (import_root / "junk.dcm").write_bytes(os.urandom(1000))
    os.mkfifo(import_root / "pipe")
    cases = {"junk.dcm": (422, "invalid_dicom"), "pipe": (400, "bad_request"), "none.dcm": (404, "not_found")}
    for path, (status, code) in cases.items():
        response = process_client.post("/dicom", json={"path": path})
        assert (response.status_code, response.json()["error"]) == (status, code), path
    ds = make_ct(np.zeros((16, 16), np.int16))
    ds.PixelData = ds.PixelData[:10]
    save(ds, import_root / "short.dcm")
    response = process_client.post("/dicom", json={"path": "short.dcm"})
    assert response.status_code == 201 and response.json()["warnings"]


def test_concurrent_posts_in_worker_processes(process_client, import_root, data_dir):
    for i in range(8):
        save(make_ct(np.full((16, 16), i, np.int16)), import_root / f"f{i}.dcm")
    with ThreadPoolExecutor(8) as pool:
        different = list(pool.map(lambda i: process_client.post("/dicom", json={"path": f"f{i}.dcm"}), range(8)))
        same = list(pool.map(lambda _: process_client.post("/dicom", json={"path": "f0.dcm"}), range(8)))
    assert [r.status_code for r in different] == [201] * 8
    assert [r.status_code for r in same] == [200] * 8
    assert {r.json()["id"] for r in same} == {different[0].json()["id"]}
    stored = [p for p in blob_files(data_dir) if ".tmp" not in p.parts]
    assert len(stored) == 16 and not [p for p in blob_files(data_dir) if ".tmp" in p.parts]


def test_a_crashing_worker_is_replaced(process_client, put):
    svc = process_client.app.state.svc
    with pytest.raises(InvalidDicom, match="crashed"):
        process_client.portal.call(svc.cpu, os._exit, 3)  # kills its worker: this task fails alone
    assert process_client.post("/dicom", json={"path": put("CT_small.dcm")}).status_code == 201


def test_a_file_that_kills_its_worker_fails_alone(process_client, monkeypatch, tmp_path):
    """In a batch, the chunk whose worker died is retried file by file: only the culprit fails."""
    from dicomsvc import batch

    svc = process_client.app.state.svc
    real_cpu = svc.cpu

    async def cpu(fn, *args):  # stands in for a decoder that segfaults on one file
        if fn is batch.ingest_items and any(item.file == "killer.dcm" for item in args[1]):
            return await real_cpu(os._exit, 9)
        return await real_cpu(fn, *args)

    monkeypatch.setattr(svc, "cpu", cpu)
    blobs = svc.blobs
    items = []
    for name in ("a.dcm", "killer.dcm", "b.dcm"):
        path = tmp_path / name
        save(make_ct(np.full((8, 8), len(items), np.int16)), path)
        items.append(batch.Item(file=name, kind="spooled", path=str(path)))
    results = process_client.portal.call(batch.run, svc, items)
    assert [r.status for r in results] == ["created", "failed", "created"]
    assert results[1].error == "invalid_dicom" and "crashed" in results[1].detail
    kept = notes(blobs.root.parent)  # the notes of placed blobs of the workers alive
    assert [p for p in blobs.tmp.iterdir() if p not in kept] == [] and len(kept) <= len(svc.cpu_pool.pids())
    assert process_client.get("/healthz").status_code == 200  # and the service goes on


def test_a_large_batch_goes_to_the_workers_in_larger_chunks(process_client, monkeypatch, tmp_path):
    """Each chunk costs a transaction and a job record besides its files (issue 12): a batch of
    120 goes in chunks of chunk_size (15 with 2 workers), not of CHUNK_MIN; every file stored."""
    from dicomsvc import batch

    svc = process_client.app.state.svc
    real_cpu, sizes = svc.cpu, []

    async def cpu(fn, *args):
        if fn is batch.ingest_items:
            sizes.append(len(args[1]))
        return await real_cpu(fn, *args)

    monkeypatch.setattr(svc, "cpu", cpu)
    items = []
    for i in range(120):
        path = tmp_path / f"{i}.dcm"
        save(make_ct(np.full((8, 8), i, np.int16)), path)
        items.append(batch.Item(file=path.name, kind="spooled", path=str(path)))
    results = process_client.portal.call(batch.run, svc, items)
    assert [r.status for r in results] == ["created"] * 120
    assert [r.file for r in results] == [item.file for item in items]
    size = batch.chunk_size(120, svc.config.workers)
    assert size > batch.CHUNK_MIN and sorted(sizes) == sorted([size] * (120 // size) + ([120 % size] if 120 % size else []))


def test_a_data_directory_that_is_not_writable_is_named_at_start(tmp_path, monkeypatch):
    import os

    from dicomsvc.service import StartupError, data_dir_lock

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path / "ro") else real_access(path, mode))
    (tmp_path / "ro").mkdir()
    with pytest.raises(StartupError, match="not writable"):
        with data_dir_lock(tmp_path / "ro"):
            pass
    assert list((tmp_path / "ro").iterdir()) == []  # nothing was written there
    with data_dir_lock(tmp_path / "rw"):  # and a writable one is locked, once
        with pytest.raises(StartupError, match="already using"):
            with data_dir_lock(tmp_path / "rw"):
                pass
    with data_dir_lock(tmp_path / "rw"):  # released when the first one ended
        pass


SERVER_SCRIPT = """
import json, sys
HEAVY = {"pydicom", "numpy", "PIL", "requests", "jwt", "cryptography", "httpx",  # the last three: OIDC only
         "pynetdicom"}  # the DICOM SCP: only with DICOMSVC_DIMSE_PORT

def heavy():
    return sorted(HEAVY & {name.split(".")[0] for name in sys.modules})

import app
from dicomsvc.config import Config
from dicomsvc.workers import WorkerPool
from starlette.testclient import TestClient

seen = {"import": heavy()}
application = app.create_app(Config.from_env())
with TestClient(application) as client:
    assert isinstance(application.state.svc.cpu_pool, WorkerPool), "the default pool: worker processes"
    seen["start"] = heavy()
    assert client.get("/healthz").status_code == 200
    assert client.get("/tags", params={"id": "A" * 22}).status_code == 404
    seen["healthz, tags"] = heavy()
    created = client.post("/dicom", json={"path": "CT_small.dcm"})
    assert created.status_code == 201, created.text
    assert client.get("/image", params={"id": created.json()["id"]}).status_code == 200
    assert client.get("/tags", params={"id": created.json()["id"]}).status_code == 200
    seen["ingest, image, tags"] = heavy()
print(json.dumps(seen))
"""


def test_the_server_process_never_imports_pydicom_numpy_pil(tmp_path):
    """Issue 12 (idle memory): pydicom, numpy, Pillow (and requests, which pydicom imports)
    are loaded by the workers only (``dicomsvc.tasks``): not by ``import app``, nor at
    start-up with the default worker processes, nor serving /healthz, /tags, /image and
    an ingest (whose result is unpickled in the server)."""
    seen = _run_with_ct_small(tmp_path, SERVER_SCRIPT)
    assert seen == {"import": [], "start": [], "healthz, tags": [], "ingest, image, tags": []}


WORKER_SCRIPT = """
import json, sys
import app
from dicomsvc.config import Config
from starlette.testclient import TestClient

# a builtin, so that asking imports nothing more into the worker
ASK = "sorted({name.split('.')[0] for name, module in __import__('sys').modules.items() if module is not None})"
application = app.create_app(Config.from_env())
with TestClient(application) as client:
    created = client.post("/dicom", json={"path": "CT_small.dcm"})
    assert created.status_code == 201, created.text
    assert client.get("/image", params={"id": created.json()["id"]}).status_code == 200
    pool = application.state.svc.cpu_pool
    print(json.dumps(client.portal.call(pool.run, eval, ASK)))
"""


def test_workers_never_import_the_servers_event_loop_metrics_or_downloads(tmp_path):
    """Issue 12 (memory: every module a worker holds counts in its RSS): the fork server
    imports the worker's side only (``dicomsvc.workerproc``, ``dicomsvc.tasks:init_worker``),
    so a worker that has ingested and rendered holds no asyncio, aiosqlite or prometheus_client
    (the pool's and the server's), and none of the requests and tqdm pydicom.data would import
    (``dicomsvc.forkserver``) -- while it does hold the pipeline's pydicom and numpy."""
    loaded = set(_run_with_ct_small(tmp_path, WORKER_SCRIPT))
    assert {"pydicom", "numpy", "dicomsvc"} <= loaded
    assert sorted(loaded & {"asyncio", "aiosqlite", "prometheus_client", "requests", "tqdm", "starlette", "uvicorn"}) == []


def _run_with_ct_small(tmp_path, script: str):
    """``script`` run by a fresh interpreter from the repository, with pydicom's CT_small.dcm
    in its import root: what it printed last, as JSON."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from pydicom.data import get_testdata_file

    (tmp_path / "import").mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm"), tmp_path / "import" / "CT_small.dcm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMSVC_")}
    env |= {"DICOMSVC_DATA_DIR": str(tmp_path / "data"), "DICOMSVC_IMPORT_ROOT": str(tmp_path / "import")}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
