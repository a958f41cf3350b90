"""DICOMSVC_LOG_FORMAT=json, DICOMSVC_LOG_FILE with rotation, and what a log line holds:
request id, user, route template -- never a URL, an id from the path or a query value."""

import json
import logging

from starlette.testclient import TestClient

from app import create_app
from dicomfiles import sample_file
from dicomsvc.config import Config

KEYS = {"time", "level", "logger", "message", "request_id", "user", "route", "status", "duration_ms"}


def make(data_dir, import_root, **settings) -> Config:
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0"}
    return Config.from_env(env | {f"DICOMSVC_{k.upper()}": str(v) for k, v in settings.items()})


def test_json_lines_to_a_file(data_dir, import_root, tmp_path, capfd):
    log_file = tmp_path / "logs" / "dicomsvc.log"
    config = make(data_dir, import_root, log_format="json", log_file=log_file)
    with TestClient(create_app(config)) as client:
        body = sample_file("CT_small.dcm").read_bytes()
        instance_id = client.post("/dicom", content=body, headers={"Content-Type": "application/dicom"}).json()["id"]
        client.get(f"/dicom/{instance_id}", headers={"X-Request-ID": "req-json-1"})
        client.get("/dicom", params={"PatientID": "PHI07ZQ"})
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert lines and all(set(line) == KEYS for line in lines)
    access = [line for line in lines if line["logger"] == "dicomsvc.access"]
    mine = [line for line in access if line["request_id"] == "req-json-1"]
    assert len(mine) == 1
    assert mine[0]["route"] == "/dicom/{id}" and mine[0]["status"] == 200 and mine[0]["duration_ms"] >= 0
    assert mine[0]["user"] == "anonymous" and mine[0]["level"] == "INFO" and mine[0]["time"].endswith("Z")
    assert mine[0]["message"].startswith("GET /dicom/{id} 200 ")
    text = log_file.read_text()
    assert instance_id not in text and "PHI07ZQ" not in text and "PatientID" not in text
    # stderr gets the same lines
    err = capfd.readouterr().err
    assert any(json.loads(line).get("request_id") == "req-json-1" for line in err.splitlines() if line.startswith("{"))


def test_the_log_file_is_rotated_by_size(data_dir, import_root, tmp_path):
    log_file = tmp_path / "dicomsvc.log"
    config = make(data_dir, import_root, log_file=log_file, log_file_bytes=2000, log_file_count=2)
    with TestClient(create_app(config)) as client:
        for _ in range(60):
            client.get("/healthz")
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("dicomsvc.log"))
    assert kept == ["dicomsvc.log", "dicomsvc.log.1", "dicomsvc.log.2"]
    assert all((tmp_path / name).stat().st_size <= 2000 for name in kept)
    assert "GET /healthz 200" in (tmp_path / "dicomsvc.log.1").read_text()


def test_text_lines_carry_the_request_id(data_dir, import_root, tmp_path):
    log_file = tmp_path / "text.log"
    config = make(data_dir, import_root, log_file=log_file)
    with TestClient(create_app(config)) as client:
        client.get("/stats", headers={"X-Request-ID": "text-77"})
    line = next(line for line in log_file.read_text().splitlines() if "GET /stats" in line)
    assert "INFO dicomsvc.access [text-77]: GET /stats 200 " in line


def test_a_second_app_replaces_the_handlers_of_the_first(data_dir, import_root, tmp_path):
    for n in (1, 2):
        with TestClient(create_app(make(data_dir, import_root, log_file=tmp_path / f"{n}.log"))):
            pass
    ours = [h for h in logging.getLogger("dicomsvc").handlers if getattr(h, "_dicomsvc", False)]
    assert len(ours) == 2  # stderr and the second file


def test_lines_logged_in_an_io_thread_carry_the_request_id(client, caplog):
    from dicomsvc.logs import RequestContext, begin_request

    caplog.set_level("INFO", logger="dicomsvc")
    svc = client.app.state.svc

    async def in_a_request():
        begin_request(RequestContext("io-thread-1", lambda: "/dicom/{id}", lambda: "alice"))
        await svc.io(logging.getLogger("dicomsvc.test").info, "from an I/O thread")

    client.portal.call(in_a_request)
    line = next(r for r in caplog.records if r.getMessage() == "from an I/O thread")
    assert (line.request_id, line.route, line.user) == ("io-thread-1", "/dicom/{id}", "alice")
