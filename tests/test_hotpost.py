"""POST /dicom {"path"} ahead of the middleware stack (http.hotpost): the same answers, log
line, metrics and audit records as the whole stack gives, and the stack for everything else."""

import pytest
from starlette.testclient import TestClient

from dicomsvc.http import hotpost
from dicomfiles import blob_files, sample_file
from indexdb import dict_rows
from test_audit import rows
from test_hotreads import IDENTITY, answer, app_with


def served_by_hotpost(monkeypatch) -> list[int]:
    """The statuses HotPost answered itself."""
    served = []
    original = hotpost.HotPost._answer

    async def spy(self, scope, send, svc, ingested, *args):
        served.append(201 if ingested.created else 200)
        return await original(self, scope, send, svc, ingested, *args)

    monkeypatch.setattr(hotpost.HotPost, "_answer", spy)
    return served


def counted(client) -> dict[str, float]:
    """The counters of POST /dicom requests and of ingests (the process's: compare changes)."""
    lines = client.get("/metrics").text.splitlines()
    found = [line.rsplit(" ", 1) for line in lines if line.startswith(("dicomsvc_http_requests_total{", "dicomsvc_instances_ingested_total{"))]
    return {k: float(v) for k, v in found if 'route="/dicom"' in k or k.startswith("dicomsvc_instances")}


@pytest.mark.parametrize("how", ["path", "upload"])
def test_answers_log_metrics_and_audit_are_the_stacks_own(monkeypatch, tmp_path, import_root, put, caplog, how):
    """A new instance (201), a duplicate (200, gzip accepted), one with warnings, by path or as an
    application/dicom body: by the stack (HotPost off) and by HotPost, the same status, headers in
    the same order, body, log lines, metrics and audit records (but for ids and times)."""
    names = [put("CT_small.dcm"), put("bad_sequence.dcm")]  # the second stored with a warning

    def sent(name: str) -> dict:
        if how == "path":
            return {"json": {"path": name}, "headers": {}}
        return {"content": (import_root / name).read_bytes(), "headers": {"Content-Type": "application/dicom"}}
    caplog.set_level("INFO", logger="dicomsvc.access")
    served = served_by_hotpost(monkeypatch)
    seen = {}
    for label in ("stack", "hot"):
        data = tmp_path / label
        with monkeypatch.context() as m:
            if label == "stack":
                m.setattr(hotpost, "_plain", lambda headers: None)
            with TestClient(app_with(data, import_root)) as client:
                caplog.clear()
                before = counted(client)
                found = []
                for i, (name, encoding) in enumerate([(names[0], IDENTITY), (names[0], {}), (names[1], IDENTITY)]):
                    request = sent(name)
                    got = client.post("/dicom", **request | {"headers": request["headers"] | encoding | {"X-Request-ID": f"req-{label}-{i}"}})
                    assert got.headers["x-request-id"] == f"req-{label}-{i}"
                    found.append(answer(got))
                counts = {k: v - before.get(k, 0) for k, v in counted(client).items()}
        ids = [body for _, _, body in found]
        lines = [r.getMessage().rsplit(" ", 1)[0] for r in caplog.records if r.name == "dicomsvc.access"]
        records = [r for r in rows(data) if (r["request_id"] or "").startswith("req-")]  # written at shutdown
        for r in records:
            assert r.pop("time") and r.pop("seq")
            r["request_id"] = r["request_id"].replace(label, "X")
            r["instance"] = ids.index(next(b for b in ids if r["instance"].encode() in b))
        seen[label] = (found, [line for line in lines if "/metrics" not in line], records, {k: v for k, v in counts.items() if v})
    assert served == [201, 200, 201]
    (stack, stack_lines, stack_records, stack_counts), (hot, hot_lines, hot_records, hot_counts) = seen["stack"], seen["hot"]
    assert [s for s, _, _ in hot] == [201, 200, 201]
    assert [(s, h) for s, h, _ in hot] == [(s, h) for s, h, _ in stack]  # headers in the same order
    for (_, _, b1), (_, _, b2) in zip(stack, hot):  # the same body but for the id
        assert len(b1) == len(b2) and b1[:7] == b2[:7] == b'{"id":"'
        assert b1[29:] == b2[29:]
    assert b'"warnings"' in hot[2][2]
    assert stack_lines == hot_lines == ["POST /dicom 201", "POST /dicom 200", "POST /dicom 201"]
    assert stack_records == hot_records and len(hot_records) == 3
    requests = 'dicomsvc_http_requests_total{method="POST",route="/dicom",status="%d"}'
    assert stack_counts == hot_counts and hot_counts[requests % 201] == 2 and hot_counts[requests % 200] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {"path": "CT_small.dcm", "anonymize": True}},  # an option in the body
        {"json": {"path": "CT_small.dcm"}, "params": {"anonymize": "true"}},  # a query string
        {"content": b'{"path": "CT_small.dcm"}', "headers": {"Content-Type": "text/plain"}},  # untyped
        {"content": b'{"path": "CT_small.dcm"}', "headers": {"Content-Type": "application/json; charset=utf-8"}},
        {"content": iter([b'{"path": ', b'"CT_small.dcm"}']), "headers": {"Content-Type": "application/json"}},  # chunked
    ],
)
def test_the_stack_answers_what_is_not_plain(monkeypatch, client, put, kwargs):
    put("CT_small.dcm")
    served = served_by_hotpost(monkeypatch)
    kwargs = {"headers": {}} | kwargs
    kwargs["headers"] = IDENTITY | kwargs["headers"]
    got = client.post("/dicom", **kwargs)
    assert got.status_code == 201 and served == []


def test_refusals_failures_and_folders_are_the_stacks(monkeypatch, client, put, import_root, data_dir):
    """Read the body, went to a worker, then handed the request (its body as it came) to the
    stack, which answers and counts as always; nothing stored twice."""
    put("CT_small.dcm", "folder/a.dcm")
    (import_root / "junk.dcm").write_bytes(b"not DICOM at all" * 20)
    served = served_by_hotpost(monkeypatch)
    before = failed_count(client)
    missing = client.post("/dicom", json={"path": "nope.dcm"}, headers=IDENTITY)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert client.post("/dicom", json={"path": "../etc/passwd"}, headers=IDENTITY).status_code in (400, 403)
    assert client.post("/dicom", json={"path": "junk.dcm"}, headers=IDENTITY).status_code == 422
    folder = client.post("/dicom", json={"path": "folder"}, headers=IDENTITY)
    assert folder.status_code == 200 and folder.json()["created"] == 1
    assert client.post("/dicom", json=["folder"], headers=IDENTITY).status_code == 400
    assert served == []
    assert dict_rows(data_dir, "SELECT COUNT(*) AS n FROM dicom") == [{"n": 1}]
    assert failed_count(client) == before + 2  # as the stack alone counts them: the missing file, the junk once


def failed_count(client) -> float:
    key = 'dicomsvc_instances_ingested_total{outcome="failed"}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines() if line.startswith(key))


def test_authentication_and_cors_keep_the_stack(tmp_path, import_root):
    for settings, enabled in (({"auth": "token"}, False), ({"cors_origins": "https://viewer.example"}, False), ({}, True)):
        app = app_with(tmp_path / "d", import_root, **settings)
        middleware = next(m for m in app.user_middleware if m.cls is hotpost.HotPost)
        assert hotpost.HotPost(None, **middleware.kwargs).enabled is enabled


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Disposition": 'attachment; filename="ct.dcm"'},  # its name is the source: the stack's
        {"Content-Type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"},  # a parameter
        {"Content-Type": "Application/DICOM"},
    ],
)
def test_the_stack_answers_uploads_that_are_not_plain(monkeypatch, client, headers):
    served = served_by_hotpost(monkeypatch)
    body = sample_file("CT_small.dcm").read_bytes()
    got = client.post("/dicom", content=body, headers=IDENTITY | {"Content-Type": "application/dicom"} | headers)
    assert got.status_code == 201 and served == []
    chunked = client.post("/dicom", content=iter([body[:1000], body[1000:]]), headers=IDENTITY | {"Content-Type": "application/dicom"})
    assert chunked.status_code == 200 and served == []  # no Content-Length


def test_an_upload_that_fails_is_the_stacks_and_leaves_nothing(monkeypatch, client, data_dir):
    """Not DICOM: ingested by HotPost (its worker refused it), then answered by the stack (422,
    one failure counted) from that outcome; no temporary file left."""
    served = served_by_hotpost(monkeypatch)
    before = failed_count(client)
    got = client.post("/dicom", content=b"not DICOM at all" * 20, headers=IDENTITY | {"Content-Type": "application/dicom"})
    assert (got.status_code, got.json()["error"]) == (422, "invalid_dicom") and served == []
    assert failed_count(client) == before + 1
    assert blob_files(data_dir) == []


def test_the_stack_gives_hotposts_outcome_again_with_no_second_ingest(monkeypatch, client, put, import_root, data_dir):
    """What HotPost hands to the stack it has run in a worker once; the stack's ingest of the same item
    gives that outcome again (Service.settled), so a file that brings its worker down costs one
    worker, not two, and junk is parsed once. The answers and counts are the stack's, as above."""
    from dicomsvc import ingest

    put("CT_small.dcm", "folder/a.dcm")
    (import_root / "junk.dcm").write_bytes(b"not DICOM at all" * 20)
    runs, real = [], ingest.ingest_group

    def counting(config, items):
        runs.extend(item[1] if item[0] == "path" else item[2] for item in items)
        return real(config, items)

    monkeypatch.setattr(ingest, "ingest_group", counting)
    served = served_by_hotpost(monkeypatch)
    cases = [
        ({"json": {"path": "junk.dcm"}}, 422, ["junk.dcm"]),  # raised in the worker
        ({"json": {"path": "nope.dcm"}}, 404, ["nope.dcm"]),
        ({"json": {"path": "../etc/passwd"}}, 403, ["../etc/passwd"]),  # refused: returned, not raised
        ({"json": {"path": "folder"}}, 200, ["folder"]),  # a folder: the stack runs its batch
        ({"content": b"not DICOM at all" * 20, "headers": {"Content-Type": "application/dicom"}}, 422, ["upload"]),
    ]
    for kwargs, status, once in cases:
        runs.clear()
        before = failed_count(client)
        got = client.post("/dicom", **kwargs | {"headers": IDENTITY | kwargs.get("headers", {})})
        assert got.status_code == status, (kwargs, got.text)
        assert runs == once, kwargs
        assert failed_count(client) == before + (status in (404, 422)), kwargs  # counted once, by the stack
    assert served == [] and blob_files(data_dir) != []  # the folder's instance
    runs.clear()  # nothing settled is left behind for the next request
    again = client.post("/dicom", json={"path": "junk.dcm"}, headers=IDENTITY)
    assert again.status_code == 422 and runs == ["junk.dcm"]
