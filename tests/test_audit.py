"""The audit trail: a storyline recorded exactly as it happened (and nothing planted in the
files anywhere in it, its file or the logs), every route's action, searches by parameter
names only, uploads per instance, append-only, GET /audit's filters and paging, batching."""

import asyncio
import io
import json
import sqlite3
import zipfile

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

import app as app_module
from app import create_app
from authhelpers import auth_config, bearer, token_app
from dicomfiles import make_ct, sample_file
from indexdb import database_errors, dict_rows, index, on_postgres
from dicomsvc.http import audit as http_audit
from dicomsvc.http.routing import all_routes
from phi_fixture import build_phi_dataset, to_bytes

DICOM = {"Content-Type": "application/dicom"}
USERS = {"ulla": "uploader", "rita": "reader", "adam": "admin"}
SHOWN = ("user", "role", "action", "method", "route", "instance", "study", "series", "sop", "job", "params", "status")


def rows(data_dir) -> list[dict]:
    return dict_rows(data_dir, "SELECT * FROM audit ORDER BY seq")


def shown(records: list[dict]) -> list[tuple]:
    return [tuple(r[k] for k in SHOWN) for r in records]


def trail(client, headers, **filters) -> list[dict]:
    """Every record through GET /audit, page by page, oldest first."""
    found, before = [], None
    while True:
        params = filters | {"limit": "3"} | ({"before": str(before)} if before else {})
        page = client.get("/audit", params=params, headers=headers)
        assert page.status_code == 200, page.text
        found += page.json()["items"]
        before = page.json()["next_before"]
        if before is None:
            return found[::-1]


def test_a_storyline_is_recorded_exactly_and_without_patient_data(monkeypatch, data_dir, import_root, tmp_path, caplog, capfd):
    caplog.set_level("DEBUG")
    audit_file, log_file = tmp_path / "audit" / "audit.jsonl", tmp_path / "dicomsvc.log"
    ds, planted = build_phi_dataset()
    study = str(ds.StudyInstanceUID)
    settings = {"audit_file": str(audit_file), "log_file": str(log_file), "log_format": "json"}
    with token_app(monkeypatch, data_dir, import_root, USERS, **settings) as (client, tokens):
        ulla, rita, adam = (bearer(tokens[u]) for u in ("ulla", "rita", "adam"))

        def rid(n: int) -> dict:
            return {"X-Request-ID": f"story-{n}"}

        upload = client.post("/dicom", content=to_bytes(ds), headers=DICOM | ulla | rid(1))
        assert upload.status_code == 201, upload.text
        source = upload.json()["id"]
        assert client.get("/tags", params={"id": source}, headers=rita | rid(2)).status_code == 200
        assert client.get(f"/dicom/{source}", headers=rita | rid(3)).status_code == 200
        assert client.get(f"/dicomweb/studies/{study}/metadata", headers=rita | rid(4)).status_code == 200
        copy = client.post(f"/dicom/{source}/anonymize", headers=ulla | rid(5))
        assert copy.status_code == 201, copy.text
        copy_id = copy.json()["id"]
        assert client.get(f"/dicom/{source}/file", headers=rita | rid(6)).status_code == 200
        assert client.get("/image", params={"id": copy_id}, headers=rita | rid(7)).status_code == 200
        searched = client.get("/dicom", params={"PatientID": ds.PatientID, "StudyDate": "19870314"}, headers=rita | rid(8))
        assert searched.status_code == 200 and len(searched.json()["items"]) == 1
        assert client.delete(f"/dicom/{source}", headers=rita | rid(9)).status_code == 403
        assert client.delete(f"/dicom/{source}", headers=adam | rid(10)).status_code == 204
        assert client.get("/stats", headers=rita).status_code == 200  # no patient data: not recorded
        assert client.get(f"/dicom/{source}", headers=rid(11)).status_code == 401  # no token
        records = trail(client, adam)
    expected = [
        ("ulla", "uploader", "upload", "POST", "/dicom", source, None, None, None, None, None, 201),
        ("rita", "reader", "view", "GET", "/tags", source, None, None, None, None, "id", 200),
        ("rita", "reader", "view", "GET", "/dicom/{id}", source, None, None, None, None, None, 200),
        ("rita", "reader", "view", "GET", "/dicomweb/studies/{study}/metadata", None, study, None, None, None, None, 200),
        ("ulla", "uploader", "anonymize", "POST", "/dicom/{id}/anonymize", source, None, None, None, None, None, 201),
        ("rita", "reader", "download", "GET", "/dicom/{id}/file", source, None, None, None, None, None, 200),
        ("rita", "reader", "download", "GET", "/image", copy_id, None, None, None, None, "id", 200),
        ("rita", "reader", "search", "GET", "/dicom", None, None, None, None, None, "PatientID,StudyDate", 200),
        ("rita", "reader", "delete", "DELETE", "/dicom/{id}", source, None, None, None, None, None, 403),
        ("adam", "admin", "delete", "DELETE", "/dicom/{id}", source, None, None, None, None, None, 204),
        ("anonymous", "", "view", "GET", "/dicom/{id}", source, None, None, None, None, None, 401),
    ]
    assert shown(records) == expected
    assert [r["request_id"] for r in records] == [f"story-{n}" for n in range(1, 12)]
    assert all(r["client"] == "testclient" and r["time"].endswith("Z") for r in records)
    assert shown(rows(data_dir)) == expected  # the table itself
    in_file = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert shown(in_file) == expected
    # nothing planted in the file reaches the trail, its file or the logs
    out, err = capfd.readouterr()
    seen = {
        "audit table": json.dumps(rows(data_dir)),
        "audit file": audit_file.read_text(),
        "log file": log_file.read_text(),
        "logs": "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx")) + out + err,
    }
    for where, text in seen.items():
        for marker in planted.markers + planted.dates + [str(ds.PatientName), ds.PatientID]:
            assert marker not in text, (where, marker)


def test_every_route_says_whether_and_how_it_touches_patient_data():
    table = [(t, m) for t, methods, _ in all_routes(app_module.routes) for m in sorted(methods) if m != "HEAD"]
    assert len(table) > 50
    assert [k for k in table if k not in http_audit.ACTIONS] == []
    assert set(http_audit.ACTIONS) - set(table) == set()  # no stale entries
    patient_data = ("/dicom", "/image", "/tags", "/studies", "/jobs", "/users/", "/dicomweb/")
    unrecorded = [k for k in table if k[0].startswith(patient_data) and http_audit.ACTIONS[k] is None]
    assert unrecorded == []
    assert {http_audit.ACTIONS[k] for k in table} - {None} == {"upload", "view", "download", "anonymize", "delete", "search", "send"}


def test_a_new_route_without_an_action_is_caught():
    async def handler(request):  # pragma: no cover - never called
        raise AssertionError

    extra = [Route("/dicom/{id}/new", handler, methods=["GET"]), Mount("/dicomweb", routes=[Route("/x", handler)])]
    table = [(t, m) for t, methods, _ in all_routes([*app_module.routes, *extra]) for m in methods if m != "HEAD"]
    assert sorted(k for k in table if k not in http_audit.ACTIONS) == [("/dicom/{id}/new", "GET"), ("/dicomweb/x", "GET")]


def test_searches_record_parameter_names_never_values(client, data_dir):
    secret = "PHI55ZQ"
    client.get("/dicom", params={"PatientID": secret, "limit": "5"})
    client.get("/dicomweb/studies", params={"PatientName": f"{secret}*", "00100020": secret, "includefield": "all"})
    client.get("/dicomweb/studies", params={f"{secret}^Name": "x", "fuzzymatching": "true"})  # a name that is no name: 400
    client.delete("/dicom", params={"PatientID": secret})
    client.get("/dicom/not-an-id-" + secret)  # text where an id belongs is not recorded
    client.get("/tags", params={"id": secret})
    got = client.get("/audit").json()["items"][::-1]
    assert [(r["action"], r["params"], r["status"]) for r in got] == [
        ("search", "PatientID,limit", 200),
        ("search", "00100020,PatientName,includefield", 200),
        ("search", "fuzzymatching", 400),
        ("delete", "PatientID", 200),
        ("view", None, 404),
        ("view", "id", 404),
    ]
    assert secret not in json.dumps(rows(data_dir))


def test_uploads_are_recorded_per_file_and_background_jobs_per_instance(client, data_dir):
    files = [make_ct(PatientName="PHI81ZQ^A"), make_ct(PatientName="PHI82ZQ^B")]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for n, ds in enumerate(files):
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            zf.writestr(f"{n}.dcm", buf.getvalue())
        zf.writestr("broken.dcm", b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f")
        zf.writestr("README.txt", b"not dicom: skipped, not recorded")
    body = archive.getvalue()
    answer = client.post("/dicom", content=body, headers={"Content-Type": "application/zip", "X-Request-ID": "zip-1"})
    assert answer.status_code == 200, answer.text
    ids = [r.get("id") for r in answer.json()["results"]]
    queued = client.post("/dicom", params={"async": "true"}, content=sample_file("CT_small.dcm").read_bytes(),
                         headers=DICOM | {"X-Request-ID": "job-1"})  # fmt: skip
    assert queued.status_code == 202
    job_id = queued.json()["job"]
    for _ in range(200):
        if client.get(f"/jobs/{job_id}").json()["status"] == "done":
            break
        __import__("time").sleep(0.05)
    job_instance = client.get(f"/jobs/{job_id}").json()["results"][0]["id"]
    got = trail(client, {}, action="upload")
    assert [(r["request_id"], r["instance"], r["job"], r["status"], r["method"]) for r in got] == [
        ("zip-1", ids[0], None, 201, "POST"),
        ("zip-1", ids[1], None, 201, "POST"),
        ("zip-1", None, None, 422, "POST"),
        ("job-1", None, job_id, 202, "POST"),
        (None, job_instance, job_id, 201, "JOB"),
    ]
    assert got[-1]["user"] == "anonymous"
    by_job = trail(client, {}, resource=job_id)  # its uploads, and each GET /jobs/{job}
    assert [r["status"] for r in by_job if r["action"] == "upload"] == [202, 201]
    assert {(r["action"], r["route"]) for r in by_job if r["action"] != "upload"} == {("view", "/jobs/{job}")}


def test_a_dicomweb_delete_records_each_instance_of_the_study(client, data_dir):
    study = make_ct().StudyInstanceUID
    ids = []
    for _ in range(2):
        ds = make_ct(StudyInstanceUID=study)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        ids.append(client.post("/dicom", content=buf.getvalue(), headers=DICOM).json()["id"])
    assert client.delete(f"/dicomweb/studies/{study}").status_code == 204
    got = trail(client, {}, action="delete")
    assert sorted((r["instance"], r["study"], r["status"]) for r in got) == sorted((i, study, 204) for i in ids)
    assert trail(client, {}, resource=study, action="delete") == got


def test_the_trail_is_append_only(client, data_dir):
    client.get("/dicom")
    client.get("/audit")  # written by now
    refused = (sqlite3.DatabaseError, *database_errors())
    with index(data_dir) as db:
        for statement in ("""UPDATE audit SET "user" = 'someone'""", "DELETE FROM audit", "TRUNCATE audit"):
            if statement.startswith("TRUNCATE") and isinstance(db, sqlite3.Connection):
                continue  # SQLite has no TRUNCATE (DELETE without WHERE, refused above)
            with pytest.raises(refused, match="append-only"):
                db.execute(statement)
    assert len(rows(data_dir)) == 1


def test_filters_and_paging(monkeypatch, data_dir, import_root):
    with token_app(monkeypatch, data_dir, import_root, USERS) as (client, tokens):
        rita, adam = bearer(tokens["rita"]), bearer(tokens["adam"])
        for n in range(5):
            client.get("/dicom", headers=rita | {"X-Request-ID": f"r{n}"})
        client.get("/dicom/" + "A" * 22, headers=adam)
        assert client.get("/audit", headers=rita).status_code == 403  # admins only
        everything = trail(client, adam)
        assert len(everything) == 6
        assert [r["request_id"] for r in trail(client, adam, user="rita")] == [f"r{n}" for n in range(5)]
        assert [r["user"] for r in trail(client, adam, action="view")] == ["adam"]
        assert [r["user"] for r in trail(client, adam, resource="A" * 22)] == ["adam"]
        assert trail(client, adam, request_id="r3")[0]["request_id"] == "r3"
        middle = everything[2]["time"]
        assert [r["seq"] for r in trail(client, adam, since=middle)] == [
            r["seq"] for r in everything if r["time"] >= middle
        ]
        assert [r["seq"] for r in trail(client, adam, until=middle)] == [r["seq"] for r in everything if r["time"] < middle]
        assert trail(client, adam, since="2000-01-01", until="2000-01-02") == []
        first = client.get("/audit", params={"limit": "2"}, headers=adam).json()
        assert [r["seq"] for r in first["items"]] == [everything[-1]["seq"], everything[-2]["seq"]]
        assert first["next_before"] == everything[-2]["seq"]
        for bad in ({"action": "steal"}, {"since": "yesterday"}, {"limit": "0"}, {"limit": "x"}, {"PatientID": "1"},
                    {"before": "-1"}):  # fmt: skip
            answer = client.get("/audit", params=bad, headers=adam)
            assert answer.status_code == 400 and answer.json()["error"] == "bad_request", bad


def test_records_are_written_in_batches_and_at_shutdown(data_dir, import_root):
    config = auth_config(data_dir, import_root, audit_flush_ms="600000", audit_batch="1000")
    with TestClient(create_app(config)) as client:
        for _ in range(3):
            client.get("/dicom")
        assert rows(data_dir) == []  # queued, not yet written
    assert len(rows(data_dir)) == 3  # written at shutdown
    config = auth_config(data_dir, import_root, audit_flush_ms="600000", audit_batch="2")
    with TestClient(create_app(config)) as client:
        # its own connection, whose commits add no fsync to the ingest's (synchronous NORMAL = 1;
        # on PostgreSQL synchronous_commit off)
        svc = client.app.state.svc
        if on_postgres(config):
            setting = client.portal.call(svc.audit_trail.db.conn.execute_fetchall, "SHOW synchronous_commit")
            assert [tuple(r) for r in setting] == [("off",)]
        else:
            assert client.portal.call(svc.audit_trail.db.conn.execute_fetchall, "PRAGMA synchronous") == [(1,)]
        client.get("/dicom")
        client.get("/dicom")
        for _ in range(100):  # a full batch is written at once (a liveness bound, not a timing)
            if len(rows(data_dir)) == 5:
                break
            __import__("time").sleep(0.05)
        assert len(rows(data_dir)) == 5


def _trail_over(monkeypatch, during_write, **limits):
    """A Trail whose database write is ``during_write(trail, rows)`` (what arrives meanwhile)."""
    from dicomsvc import audit
    from dicomsvc.storage import audit as audit_rows

    writes: list[list[str]] = []

    async def append(db, rows):
        writes.append([row[audit_rows.COLUMNS.index("request_id")] for row in rows])
        during_write(trail, rows)

    monkeypatch.setattr(audit_rows, "append", append)
    trail = audit.Trail(None, flush_ms=100, batch=limits.get("batch", 500), queue_max=limits.get("queue_max", 10_000), file=None, io=None)
    return trail, writes, lambda rid: audit.Record("2026-12-03T00:00:00.000Z", "anonymous", "", "view", "GET", "/image", request_id=rid)


def test_a_flush_writes_what_was_waiting_and_leaves_what_comes_meanwhile_for_the_next_batch(monkeypatch):
    # Requests answered while a batch is written add records: they wait for the next batch
    # (they were written a few at a time, a transaction each, for as long as requests kept coming)
    trail, writes, record = _trail_over(monkeypatch, lambda trail, rows: len(writes) < 50 and trail.add([record(f"m{len(writes)}")]))
    trail.add([record(f"r{n}") for n in range(3)])
    assert asyncio.run(trail.flush())
    assert writes == [["r0", "r1", "r2"]]
    assert [r.request_id for r in trail.pending] == ["m1"]


def test_records_dropped_while_a_batch_is_written_are_not_counted_twice(monkeypatch):
    # the queue overflows during the write: its oldest records (the batch's own) are dropped,
    # and only what is left of the batch is taken off the queue, never a newer record
    trail, writes, record = _trail_over(
        monkeypatch, lambda trail, rows: len(writes) == 1 and trail.add([record(x) for x in "def"]), queue_max=4
    )
    trail.add([record(x) for x in "abc"])
    assert asyncio.run(trail.flush())
    assert writes == [["a", "b", "c"]] and trail.dropped == 2
    assert [r.request_id for r in trail.pending] == ["d", "e", "f"]


def test_audit_off(data_dir, import_root):
    with TestClient(create_app(auth_config(data_dir, import_root, audit="false"))) as client:
        client.get("/dicom")
        assert client.get("/audit").json()["items"] == []
    assert rows(data_dir) == []


@pytest.mark.sqlite_only(reason="PRAGMA query_only on the audit trail's one connection stands in for a full disk")
def test_records_the_database_refuses_are_kept_and_written_later(data_dir, import_root):
    from dicomsvc import metrics

    config = auth_config(data_dir, import_root, audit_flush_ms="50", audit_batch="1", audit_queue_max="3")
    with TestClient(create_app(config)) as client:
        svc = client.app.state.svc
        errors = metrics.AUDIT_ERRORS._value.get()
        dropped = metrics.AUDIT_DROPPED._value.get()
        writer = svc.audit_trail.db.conn
        client.portal.call(writer.execute, "PRAGMA query_only = ON")  # as a full or read-only disk would
        for n in range(5):
            client.get("/dicom", headers={"X-Request-ID": f"q{n}"})
        deadline = __import__("time").monotonic() + 30
        while metrics.AUDIT_ERRORS._value.get() == errors:
            assert __import__("time").monotonic() < deadline
            __import__("time").sleep(0.02)
        assert rows(data_dir) == []
        assert len(svc.audit_trail.pending) == 3 and metrics.AUDIT_DROPPED._value.get() - dropped == 2
        client.portal.call(writer.execute, "PRAGMA query_only = OFF")
        got = trail(client, {})  # GET /audit writes what waits first
    assert [r["request_id"] for r in got] == ["q2", "q3", "q4"]  # the oldest two were dropped


def test_a_record_time_is_written_as_datetime_would_write_it_to_the_millisecond():
    """``audit.stamp`` keeps the text of the last whole second: each stamp, in or across seconds
    and at either edge of one, is what datetime's isoformat writes (milliseconds cut), and
    ``now`` is the current time."""
    from datetime import datetime, timedelta, timezone

    from dicomsvc import audit

    def by_datetime(ns: int) -> str:
        moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ns // 1000)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    second = 1_796_349_600 * 10**9  # 2026-12-04T02:00:00Z
    for ns in (second, second + 999_999_999, second + 1_000_000_000, second + 123_456_789, second - 1,
               second + 86_400 * 10**9 + 1_000_000, second + 5_000_000, second + 5_000_000 - 1):  # fmt: skip
        assert audit.stamp(ns) == by_datetime(ns)
    before = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    stamped = audit.now()
    after = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert before <= stamped <= after
