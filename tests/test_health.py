"""/readyz: 503 JSON for each cause -- a database that takes no writes, too little free space,
no worker alive -- and 200 once it is gone; /healthz stays a liveness check."""

import os
import signal
import time

import pytest

from dicomsvc import health


def test_ready(client):
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready" and all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["disk"]["min_free_bytes"] == 1024**3


def test_too_little_free_space(client, monkeypatch, data_dir):
    seen = []
    monkeypatch.setattr(health, "free_bytes", lambda path: seen.append(path) or 1024**3 - 1)
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.json()["error"] == "not_ready"
    assert answer.json()["checks"]["disk"] == {"ok": False, "free_bytes": 1024**3 - 1, "min_free_bytes": 1024**3}
    assert "disk" in answer.json()["detail"] and seen == [data_dir.resolve()]
    assert client.get("/healthz").status_code == 200  # alive all the same
    monkeypatch.setattr(health, "free_bytes", lambda path: 1024**3)
    assert client.get("/readyz").status_code == 200


@pytest.mark.sqlite_only(reason="PRAGMA query_only stands in for a read-only file")
def test_a_database_that_takes_no_writes(client):
    svc = client.app.state.svc
    client.portal.call(svc.db.conn.execute, "PRAGMA query_only = ON")  # as a read-only file would
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["database"] == {"ok": False, "error": "OperationalError"}
    client.portal.call(svc.db.conn.execute, "PRAGMA query_only = OFF")
    assert client.get("/readyz").status_code == 200


def test_no_worker_alive_then_replaced(process_client):
    pool = process_client.app.state.svc.cpu_pool
    pids = health.worker_pids(pool)
    assert pids and len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(health.alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = process_client.get("/readyz")
    assert answer.status_code == 503 and answer.json()["checks"]["workers"] == {"ok": False, "alive": 0}
    deadline = time.monotonic() + 120  # a liveness bound: a new worker imports the pipeline first
    while process_client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "no worker came back"
        time.sleep(0.2)
    assert process_client.post("/dicom", json={"path": "none.dcm"}).status_code == 404  # and work is served


def test_min_free_bytes_is_a_setting(data_dir, import_root):
    from starlette.testclient import TestClient

    from app import create_app
    from dicomsvc.config import Config

    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0",
           "DICOMSVC_MIN_FREE_BYTES": str(2**62)}  # fmt: skip
    with TestClient(create_app(Config.from_env(env))) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.json()["checks"]["disk"]["ok"] is False
