"""GET /image and GET /tags from the read cache (http.hotreads, http.readcache): the same answers,
log line, metrics and audit record as the whole stack gives; never a deleted instance; the point
reads on the event loop (storage.sqlite.read_now) and their fallback when SQLite is busy."""

import asyncio
import dataclasses
import sqlite3
import uuid

import pytest
from starlette.testclient import TestClient

from app import create_app
from dicomfiles import ENCRYPTED_SUITE
from dicomsvc import audit
from dicomsvc.config import Config
from dicomsvc.http import hotreads
from dicomsvc.http import instances as http_instances
from dicomsvc.http.readcache import ReadCache
from dicomsvc.http.requestid import new_id
from dicomsvc.storage import sqlite as sqlite_storage
from test_audit import rows

UNSTABLE = {"x-request-id"}  # differs per request
IDENTITY = {"Accept-Encoding": "identity"}  # the test client asks for gzip otherwise


def app_with(data_dir, import_root, **settings):
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0"}
    return create_app(Config.from_env(env | {f"DICOMSVC_{k.upper()}": str(v) for k, v in settings.items()}))


def answer(response) -> tuple:
    headers = [(k, v) for k, v in response.headers.raw if k.decode() not in UNSTABLE]
    return response.status_code, headers, response.content


def served_by_hotreads(monkeypatch) -> list[str]:
    """Paths HotReads answered itself (the stack's handlers are made to fail after this)."""
    served = []
    original = hotreads.HotReads._answer

    async def spy(self, scope, path):
        found = await original(self, scope, path)
        if found is not None:
            served.append(path)
        return found

    monkeypatch.setattr(hotreads.HotReads, "_answer", spy)
    return served


REQUESTS = [
    ("/image", {}),
    ("/image", {"Accept": "image/png"}),
    ("/image", {"Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"}),
    ("/image", "ETAG"),  # If-None-Match: the instance's ETag (304)
    ("/image", {"If-None-Match": '"other.png"'}),
    ("/tags", {"Accept-Encoding": "identity"}),
    ("/tags", {"Accept-Encoding": "gzip;q=0, identity"}),
]


def test_cached_answers_are_the_stacks_own(monkeypatch, tmp_path, import_root, put):
    """Every plain /image and /tags request, answered by the stack (no read cache) and by HotReads
    (from the cache, once a first request filled it): the same status, headers in the same
    order, body."""
    name = put("CT_small.dcm")
    results = {}
    served = served_by_hotreads(monkeypatch)
    for label, settings in (("stack", {"read_cache_bytes": 0}), ("cached", {})):
        with TestClient(app_with(tmp_path / label, import_root, **settings)) as client:
            instance = client.post("/dicom", json={"path": name}).json()["id"]
            for path, _ in REQUESTS:  # the first requests fill the cache
                client.get(path, params={"id": instance}, headers={"Accept-Encoding": "identity"})
            served.clear()
            found = []
            for path, headers in REQUESTS:
                if headers == "ETAG":
                    headers = {"If-None-Match": f'"{instance}.png"'}
                response = client.get(path, params={"id": instance}, headers=headers)
                found.append(answer(response))
            results[label] = (instance, found, list(served))
    (stack_id, stack, stack_served), (cached_id, cached, cached_served) = results["stack"], results["cached"]
    assert stack_served == [] and cached_served == [path for path, _ in REQUESTS]
    assert [s for s, _, _ in cached] == [200, 200, 200, 304, 200, 200, 200]
    same = [(s, [(k, v.replace(stack_id.encode(), cached_id.encode())) for k, v in h], b) for s, h, b in stack]
    tags = 5  # /tags bodies carry the id: compare them with it swapped
    assert cached[:tags] == same[:tags]
    for (s1, h1, b1), (s2, h2, b2) in zip(same[tags:], cached[tags:]):
        assert (s1, h1, b1.replace(stack_id.encode(), cached_id.encode())) == (s2, h2, b2)


def test_the_stack_answers_what_is_not_plain(monkeypatch, client, put):
    """Other renderings, other query parameters, gzip on /tags, HEAD, unknown ids: the stack."""
    instance = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    assert client.get("/image", params={"id": instance}).status_code == 200
    assert client.get("/tags", params={"id": instance}, headers=IDENTITY).status_code == 200
    served = served_by_hotreads(monkeypatch)
    assert client.get("/image", params={"id": instance}, headers={"Accept": "image/jpeg"}).headers["content-type"] == "image/jpeg"
    assert client.get("/image", params={"id": instance, "width": "64"}).status_code == 200
    assert client.get("/tags", params={"id": instance, "format": "dicomjson"}).status_code == 200
    gz = client.get("/tags", params={"id": instance}, headers={"Accept-Encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert client.get("/image", params={"id": "A" * 22}).status_code == 404
    assert client.get("/tags", params={"id": "A" * 22}).status_code == 404
    assert client.get("/tags", params={"id": "nope"}).status_code == 404
    assert served == []


def test_a_deleted_instance_is_never_served_from_the_cache(client, put):
    instance = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    for path in ("/image", "/tags", "/image", "/tags"):
        assert client.get(path, params={"id": instance}, headers=IDENTITY).status_code == 200
    assert client.delete(f"/dicom/{instance}").status_code == 204
    for path in ("/image", "/tags"):
        gone = client.get(path, params={"id": instance})
        assert gone.status_code == 404 and gone.json()["error"] == "not_found"


@pytest.mark.parametrize("delete", ["id", "filter", "dicomweb"])
def test_every_delete_empties_the_cache_of_its_instances(monkeypatch, client, put, delete):
    """The cached path asks no database: each delete route must forget what it removed."""
    instance = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    study = client.get(f"/dicom/{instance}").json()["StudyInstanceUID"]
    for path in ("/image", "/tags"):  # the stack fills the cache
        assert client.get(path, params={"id": instance}, headers=IDENTITY).status_code == 200
    cache = client.app.state.read_cache
    assert ("png", instance) in cache and ("tags", instance) in cache
    served = served_by_hotreads(monkeypatch)
    assert client.get("/image", params={"id": instance}).status_code == 200 and served == ["/image"]
    if delete == "id":
        assert client.delete(f"/dicom/{instance}").status_code == 204
    elif delete == "filter":
        assert client.delete("/dicom", params={"StudyInstanceUID": study}).json() == {"deleted": 1}
    else:
        assert client.delete(f"/dicomweb/studies/{study}").status_code == 204
    assert ("png", instance) not in cache and ("tags", instance) not in cache
    for path in ("/image", "/tags"):
        gone = client.get(path, params={"id": instance}, headers=IDENTITY)
        assert gone.status_code == 404 and gone.json()["error"] == "not_found"
    assert served == ["/image"]


def test_a_fill_that_raced_a_delete_is_not_kept(monkeypatch, client, put):
    """The row was looked up, then a delete committed while the file was read: what was read
    is answered (the request began first) but not kept for the cached path to serve."""
    instance = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    cache = client.app.state.read_cache
    original = http_instances._read_stored
    monkeypatch.setattr(http_instances, "read_if_cached", lambda path: None)  # the I/O thread's read

    def read_during_a_delete(path):
        cache.forget([instance])  # what a delete committing now does
        return original(path)

    monkeypatch.setattr(http_instances, "_read_stored", read_during_a_delete)
    assert client.get("/image", params={"id": instance}).status_code == 200
    assert ("png", instance) not in cache


def test_the_cache_drops_fills_taken_before_a_forget():
    cache = ReadCache(1000)
    cache.put(("png", "a"), b"x" * 10)
    before = cache.generation
    cache.forget(["a"])
    assert ("png", "a") not in cache and cache.size == 0
    cache.put(("png", "b"), b"y", before)  # looked up before the forget
    cache.put(("png", "c"), b"z", cache.generation)
    assert ("png", "b") not in cache and cache.get(("png", "c")) == b"z"


def test_log_metrics_and_audit_as_the_stack_records_them(monkeypatch, tmp_path, import_root, put, caplog):
    """The request's id (the client's), one request-log line, the request counted, and an
    audit record equal to the stack's but for its time and request id."""
    name = put("CT_small.dcm")
    caplog.set_level("INFO", logger="dicomsvc.access")
    served = served_by_hotreads(monkeypatch)
    seen = {}
    for label, settings in (("stack", {"read_cache_bytes": 0}), ("cached", {})):
        data = tmp_path / label
        with TestClient(app_with(data, import_root, **settings)) as client:
            instance = client.post("/dicom", json={"path": name}).json()["id"]
            for path in ("/image", "/tags"):
                client.get(path, params={"id": instance}, headers=IDENTITY)  # fills the cache (a miss: answered here too)
            caplog.clear()
            counts = counted(client)
            answers = [
                client.get(path, params={"id": instance}, headers=IDENTITY | {"X-Request-ID": f"req-{label}-{path[1:]}"})
                for path in ("/image", "/tags")
            ]
            assert [a.headers["x-request-id"] for a in answers] == [f"req-{label}-image", f"req-{label}-tags"]
            counts = {k: v - counts.get(k, 0) for k, v in counted(client).items()}
        lines = [r.getMessage().rsplit(" ", 1)[0] for r in caplog.records if r.name == "dicomsvc.access"]
        lines = [line for line in lines if "/metrics" not in line]
        records = [r for r in rows(data) if (r["request_id"] or "").startswith("req-")]  # written at shutdown
        for r in records:
            assert r.pop("time") and r.pop("seq")
            assert r["instance"] == instance
            r["instance"] = "ID"
        seen[label] = (lines[:2], records, {k: v for k, v in counts.items() if v})
    assert served == ["/image", "/tags"] * 2  # the first reads (filling the cache) and the cached ones
    assert seen["stack"][0] == seen["cached"][0] == ["GET /image 200", "GET /tags 200"]
    stack_records = [r | {"request_id": r["request_id"].replace("stack", "cached")} for r in seen["stack"][1]]
    assert stack_records == seen["cached"][1] and len(stack_records) == 2
    requests = 'dicomsvc_http_requests_total{method="GET",route="%s",status="200"}'
    assert seen["stack"][2] == seen["cached"][2] == {requests % "/image": 1.0, requests % "/tags": 1.0}


def counted(client) -> dict[str, float]:
    """The request counters of /image and /tags (the metrics are the process's: compare changes)."""
    lines = client.get("/metrics").text.splitlines()
    found = [line.rsplit(" ", 1) for line in lines if line.startswith("dicomsvc_http_requests_total{")]
    return {k: float(v) for k, v in found if 'route="/image"' in k or 'route="/tags"' in k}


def test_authentication_and_cors_keep_the_stack(monkeypatch, tmp_path, import_root):
    for settings in ({"auth": "token"}, {"cors_origins": "https://viewer.example"}, {"read_cache_bytes": 0}):
        app = app_with(tmp_path / "d", import_root, **settings)
        middleware = next(m for m in app.user_middleware if m.cls is hotreads.HotReads)
        assert not hotreads.HotReads(None, **middleware.kwargs).enabled
    app = app_with(tmp_path / "d", import_root)
    middleware = next(m for m in app.user_middleware if m.cls is hotreads.HotReads)
    assert hotreads.HotReads(None, **middleware.kwargs).enabled


def test_the_read_cache_is_bounded_least_recently_used_out():
    cache = ReadCache(800)
    for key in "abcd":
        cache.put(key, bytes(100))
    assert cache.get("a") is not None  # now the most recent
    cache.put("big", bytes(101))  # more than an eighth: not kept
    assert cache.get("big") is None
    for key in "efghi":
        cache.put(key, bytes(100))
    assert cache.size <= 800 and len(cache) == 8
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("i") is not None


def test_a_cache_miss_reads_the_file_and_keeps_it(monkeypatch, client, put):
    instance = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    reads = []
    original = http_instances._read_stored
    monkeypatch.setattr(http_instances, "read_if_cached", lambda path: None)  # as if not in the page cache
    monkeypatch.setattr(http_instances, "_read_stored", lambda path: reads.append(path) or original(path))
    first, second = (client.get("/image", params={"id": instance}) for _ in range(2))
    assert first.content == second.content and first.content.startswith(b"\x89PNG")
    assert len(reads) == 1


class BusyReader:
    """A reader connection SQLite answers busy on (a WAL being recovered, say)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def execute(self, sql, params):
        exc = sqlite3.OperationalError("database is locked")
        exc.sqlite_errorcode = self.code
        raise exc


def test_a_busy_point_read_goes_through_aiosqlite(client, put):
    instance = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    db = client.app.state.svc.db
    reader, db.reader = db.reader, BusyReader(sqlite3.SQLITE_BUSY)
    try:
        assert client.get("/image", params={"id": instance}).status_code == 200
        assert client.get("/tags", params={"id": instance}).status_code == 200
        assert client.get(f"/dicom/{instance}").status_code == 200
        db.reader = BusyReader(sqlite3.SQLITE_IOERR)  # anything else is an error, not retried
        with pytest.raises(sqlite3.OperationalError):
            asyncio.run(sqlite_storage.read_now(db, "SELECT 1"))
    finally:
        db.reader = reader


def test_request_ids_are_uuid4():
    made = [new_id() for _ in range(600)]  # more than one 4 KiB draw of random bytes
    assert len(set(made)) == 600
    for rid in made:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_audit_rows_are_the_records_fields_in_order():
    record = audit.Record("t", "u", "reader", "view", "GET", "/tags", instance="i", params="id", status=200)
    assert record.row() == dataclasses.astuple(record)


@pytest.mark.skipif(ENCRYPTED_SUITE, reason="an encrypted PNG is always decrypted in an I/O thread")
@pytest.mark.local_blobs_only("with S3 a stored blob is read through an I/O thread (a missing copy is fetched)")
def test_a_stored_png_in_the_page_cache_is_read_without_an_io_thread(monkeypatch, client, put):
    """A first read of a PNG the page cache holds: read on the event loop (RWF_NOWAIT), no trip
    to an I/O thread; the same bytes as the thread's read."""
    instance = client.post("/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    threads = []
    monkeypatch.setattr(http_instances, "_read_stored", lambda path: threads.append(path))
    inline = client.get("/image", params={"id": instance})
    assert inline.status_code == 200 and inline.content.startswith(b"\x89PNG") and threads == []
