"""Background jobs against a real server process: killed mid-job, restarted, finished."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from dicomfiles import make_ct, save

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(data_dir: Path, import_root: Path, port: int, serve: bool = False) -> subprocess.Popen:
    """uvicorn's command line running the app (or, with ``serve``, ``dicomsvc serve``) on ``port``."""
    env = dict(os.environ) | {
        "DICOMSVC_DATA_DIR": str(data_dir),
        "DICOMSVC_IMPORT_ROOT": str(import_root),
        "DICOMSVC_WORKERS": "1",
        "DICOMSVC_SYNC_LIMIT": "10",
        "DICOMSVC_LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "app:create_app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    if serve:
        argv = [sys.executable, "-m", "dicomsvc.cli.main", "serve"]
        env |= {"DICOMSVC_HOST": "127.0.0.1", "DICOMSVC_PORT": str(port)}
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("server did not start")


@pytest.mark.same_in_scale_run("the killed server runs in a subprocess, SQLite and local blobs in either run")
@pytest.mark.parametrize("upload", ["folder", "zip"])
def test_a_job_survives_a_killed_server(tmp_path, upload):
    data_dir, import_root = tmp_path / "data", tmp_path / "import"
    rng = np.random.default_rng(1)
    count = 300
    for i in range(count):
        save(make_ct(rng.integers(0, 2000, (256, 256), dtype=np.int16)), import_root / "big" / f"{i:04d}.dcm")
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for path in sorted((import_root / "big").iterdir()):
            out.write(path, path.name)
    port = free_port()
    server = start_server(data_dir, import_root, port)
    try:
        if upload == "folder":
            answer = httpx.post(f"http://127.0.0.1:{port}/dicom", json={"path": "big"}, timeout=30)
        else:
            with open(archive, "rb") as body:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/dicom", content=body, headers={"content-type": "application/zip"}, timeout=60
                )
        assert answer.status_code == 202
        status_url = answer.json()["status_url"]  # absolute
        deadline = time.monotonic() + 60
        while (job := httpx.get(status_url).json())["processed"] < 16:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)  # a crash, mid-job
        server.wait(timeout=10)
    finally:
        server.kill()
    assert job["processed"] < count, "the job finished before the server could be killed"

    server = start_server(data_dir, import_root, port)
    try:
        deadline = time.monotonic() + 120
        while (job := httpx.get(status_url).json())["status"] != "done":
            assert time.monotonic() < deadline and job["status"] != "failed", job
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert job["total"] == job["processed"] == count
    assert job["failed"] == 0 and job["created"] + job["duplicates"] == count
    with sqlite3.connect(data_dir / "dicom.db") as db:
        (stored, distinct) = db.execute("SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM dicom").fetchone()
    assert stored == distinct == count  # nothing lost, nothing twice
    assert not (data_dir / "spool").exists() or not list((data_dir / "spool").iterdir())
    assert not list((data_dir / "blobs" / ".tmp").iterdir())


@pytest.mark.same_in_scale_run("the server runs in a subprocess, SQLite and local blobs in either run")
def test_a_request_waiting_for_a_job_does_not_hold_up_a_stopping_server(tmp_path):
    """GET /jobs/{id}?wait= holds its answer until the job ends; a server told to stop (SIGTERM)
    waits for the requests under way, so the waiting one answers at once, with the job unfinished."""
    data_dir, import_root = tmp_path / "data", tmp_path / "import"
    rng = np.random.default_rng(2)
    count = 1500  # a few seconds of ingest on one worker: the job still runs when the signal comes
    for i in range(count):
        save(make_ct(rng.integers(0, 2000, (64, 64), dtype=np.int16)), import_root / "big" / f"{i:04d}.dcm")
    port = free_port()
    server = start_server(data_dir, import_root, port, serve=True)
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/dicom", json={"path": "big"}, timeout=30)
        assert answer.status_code == 202
        status_url = answer.json()["status_url"]
        deadline = time.monotonic() + 60
        while httpx.get(status_url).json()["processed"] < 16:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(httpx.get, status_url, params={"wait": "60"}, timeout=30)
            time.sleep(0.5)  # the request under way (its bytes sent, its wait begun)
            server.send_signal(signal.SIGTERM)
            answered = waiting.result(timeout=40)
        # stopped cleanly (uvicorn raises the signal it caught again once it has stopped)
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        server.kill()
    assert answered.status_code == 200
    job = answered.json()
    assert job["status"] == "running" and job["processed"] < count, "the answer waited for the job"
