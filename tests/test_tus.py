"""Resumable uploads over tus 1.0.0 (``/uploads/``; dicomsvc/http/tus.py, dicomsvc/resumable.py):
the protocol's core, creation, termination, expiration and checksum; chunks that survive a
broken connection; the completed file ingested as POST /dicom would; limits and hostile
headers; ownership; and the ``tuspy`` client against a real ``dicomsvc serve`` through a proxy
that cuts the connection mid-chunk."""

import base64
import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from starlette.testclient import TestClient

from app import create_app
from authhelpers import bearer, token_app
from indexdb import database_env, index
from test_intake import wait_for
from dicomfiles import ENCRYPTED_SUITE, SUITE_KEY, make_ct, sample_file
from dicomsvc.config import Config
from dicomsvc.storage import records
from dicomsvc.storage.crypt import Keyring

REPO = Path(__file__).resolve().parent.parent
TUS = {"Tus-Resumable": "1.0.0"}
PATCH = TUS | {"Content-Type": "application/offset+octet-stream"}
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm")  # distinct SOP Instance UIDs


def settings_config(data_dir: Path, import_root: Path, **settings: str) -> Config:
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "0"}
    return Config.from_env(env | {f"DICOMSVC_{k.upper()}": v for k, v in settings.items()})


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def dicom_bytes(ds=None) -> bytes:
    out = io.BytesIO()
    (ds if ds is not None else make_ct()).save_as(out, enforce_file_format=True)
    return out.getvalue()


def create(client, length: int, headers: dict | None = None, **meta: str) -> str:
    answer = client.post("/uploads/", headers=TUS | {"Upload-Length": str(length), "Upload-Metadata": metadata(**meta)} | (headers or {}))
    assert answer.status_code == 201, answer.text
    assert answer.headers["tus-resumable"] == "1.0.0"
    assert "GMT" in answer.headers["upload-expires"]
    return answer.headers["location"].split("/uploads/", 1)[1]


def patch(client, upload: str, offset: int, data: bytes, headers: dict | None = None):
    return client.patch(f"/uploads/{upload}", content=data, headers=PATCH | {"Upload-Offset": str(offset)} | (headers or {}))


def send(client, upload: str, data: bytes, chunk: int, headers: dict | None = None):
    """Every chunk in turn; the last answer."""
    answer = None
    for start in range(0, len(data), chunk):
        answer = patch(client, upload, start, data[start : start + chunk], headers)
        if start + chunk < len(data):
            assert answer.status_code == 204, answer.text
            assert int(answer.headers["upload-offset"]) == start + chunk
    return answer


def stored_upload(path: Path, received: int, key: bytes | None = SUITE_KEY if ENCRYPTED_SUITE else None) -> bytes:
    """What an upload's file holds for its first ``received`` bytes, and nothing after them:
    the file itself, or (with a key) the plaintext of its sealed records."""
    if key is None:
        return path.read_bytes()
    with open(path, "rb") as raw:
        assert records.end_of(raw.fileno(), received) == path.stat().st_size
    with records.Records(open(path, "rb"), Keyring((key,)), path.name, received) as plain:
        return plain.read()


def offset(client, upload: str, headers: dict | None = None) -> int:
    answer = client.head(f"/uploads/{upload}", headers=TUS | (headers or {}))
    assert answer.status_code == 200, answer.status_code
    assert answer.headers["cache-control"] == "no-store"
    return int(answer.headers["upload-offset"])


def instance_count(data_dir: Path) -> int:
    with index(data_dir) as db:
        return db.execute("SELECT COUNT(*) FROM dicom").fetchone()[0]


def test_options_advertise_the_protocol(client):
    answer = client.options("/uploads/")
    assert answer.status_code == 204
    assert answer.headers["tus-version"] == "1.0.0"
    assert set(answer.headers["tus-extension"].split(",")) == {"creation", "termination", "expiration", "checksum"}
    assert int(answer.headers["tus-max-size"]) == 4 * 1024**3  # DICOMSVC_MAX_UPLOAD_BYTES by default
    assert "sha1" in answer.headers["tus-checksum-algorithm"].split(",")


def test_a_dicom_file_in_chunks_is_ingested_with_its_options(client, data_dir):
    ds = make_ct(pixels=np.arange(64 * 64, dtype=np.int16).reshape(64, 64), PatientName="Planted^Name")
    data = dicom_bytes(ds)
    upload = create(client, len(data), filename="scan.dcm", anonymize="true")
    assert offset(client, upload) == 0
    last = send(client, upload, data, 3000)
    assert last.status_code == 204, last.text
    assert int(last.headers["upload-offset"]) == len(data)
    result = httpx.Response(200, content=last.headers["upload-result"]).json()
    assert result["status"] == 201 and len(result["id"]) == 22
    # the outcome stays readable: HEAD's header, GET's JSON
    assert client.head(f"/uploads/{upload}", headers=TUS).headers["upload-result"] == last.headers["upload-result"]
    state = client.get(f"/uploads/{upload}").json()
    assert state | {"expires": None} == {
        "id": upload, "status": "done", "offset": len(data), "length": len(data), "expires": None,
        "result": {"status": 201, "id": result["id"]},
    }  # fmt: skip
    tags = client.get("/tags", params={"id": result["id"]})
    assert tags.status_code == 200 and "Planted" not in tags.text  # anonymize, from Upload-Metadata
    assert not list((data_dir / "uploads").iterdir())  # the bytes are gone once ingested


def test_a_big_chunk_is_on_its_way_to_the_disk_before_it_is_synced(client, data_dir, monkeypatch):
    """A chunk's pages are written out as it arrives (sync_file_range), so the fdatasync before
    its offset is recorded finds no pile of dirty pages waiting for it (issue 12)."""
    from test_intake import counts_dirty_pages, dirty_pages

    if not counts_dirty_pages(data_dir):
        pytest.skip("no cachestat(2) here, or no disk behind this folder (tmpfs)")

    seen: list[tuple[int | None, int]] = []
    real = os.fdatasync

    def noting(fd):
        seen.append((dirty_pages(Path(os.readlink(f"/proc/self/fd/{fd}"))), os.fstat(fd).st_size // 4096))
        real(fd)

    data = os.urandom(6 << 20)
    upload = create(client, len(data) + 1)  # one byte short of complete: nothing to ingest
    monkeypatch.setattr(os, "fdatasync", noting)
    answer = patch(client, upload, 0, data)
    assert answer.status_code == 204, answer.text
    ((dirty, pages),) = [v for v in seen if v[1] > 1000]  # the upload's file
    assert dirty <= pages // 4  # without the writeback: every page still dirty


def test_the_last_patch_again_answers_the_same_and_stores_nothing_twice(client, data_dir):
    data = dicom_bytes()
    upload = create(client, len(data))
    first = patch(client, upload, 0, data)
    assert first.status_code == 204
    again = patch(client, upload, len(data), b"")  # a client that lost the answer retries
    assert again.status_code == 204 and again.headers["upload-result"] == first.headers["upload-result"]
    assert patch(client, upload, 0, data).status_code == 409
    assert instance_count(data_dir) == 1
    # the same file uploaded again: a duplicate (200), not a second instance
    second = create(client, len(data))
    assert '"status":200' in patch(client, second, 0, data).headers["upload-result"]
    assert instance_count(data_dir) == 1


def test_a_file_that_is_not_dicom_fails_with_the_ingest_status(client):
    data = b"this is not a DICOM file at all" * 10
    upload = create(client, len(data))
    answer = patch(client, upload, 0, data)
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_dicom"
    assert '"status":422' in answer.headers["upload-result"]
    assert client.get(f"/uploads/{upload}").json()["status"] == "failed"


def test_a_zip_is_a_batch_and_a_big_one_a_job(client, data_dir, tmp_path, import_root):
    names = PYDICOM_FILES
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in names:
            zf.write(sample_file(name), f"dir/{name}")
    data = archive.getvalue()
    upload = create(client, len(data), filename="study.zip")
    answer = send(client, upload, data, 100_000)
    assert answer.status_code == 204, answer.text
    result = httpx.Response(200, content=answer.headers["upload-result"]).json()
    assert result == {"status": 200, "created": len(names), "duplicates": 0, "failed": 0, "skipped": 0}
    files = client.get(f"/uploads/{upload}").json()["result"]["results"]
    assert sorted(r["file"] for r in files) == sorted(f"dir/{n}" for n in names)
    # async (or more than DICOMSVC_SYNC_LIMIT files): a background job, whose status is linked
    upload = create(client, len(data), **{"async": "true"})
    result = httpx.Response(200, content=patch(client, upload, 0, data).headers["upload-result"]).json()
    assert result["status"] == 202 and result["status_url"].endswith(f"/jobs/{result['job']}")
    deadline = time.monotonic() + 60
    while (job := client.get(f"/jobs/{result['job']}").json())["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["duplicates"] == len(names) and job["created"] == 0
    assert instance_count(data_dir) == len(names)


def test_offset_content_type_and_checksum_are_checked(client, data_dir):
    data = dicom_bytes()
    upload = create(client, len(data))
    assert patch(client, upload, 0, data[:1000]).status_code == 204
    mismatch = patch(client, upload, 500, data[500:1500])
    assert mismatch.status_code == 409 and mismatch.json()["error"] == "offset_mismatch"
    wrong = client.patch(f"/uploads/{upload}", content=data[1000:], headers=TUS | {"Upload-Offset": "1000", "Content-Type": "application/dicom"})
    assert wrong.status_code == 415 and wrong.json()["error"] == "unsupported_media_type"
    chunk = data[1000:2000]
    bad_sum = {"Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()}
    refused = patch(client, upload, 1000, chunk, bad_sum)
    assert refused.status_code == 460 and refused.json()["error"] == "checksum_mismatch"
    assert offset(client, upload) == 1000  # the chunk was not kept
    assert stored_upload(data_dir / "uploads" / upload, 1000) == data[:1000]
    good_sum = {"Upload-Checksum": "sha256 " + base64.b64encode(hashlib.sha256(chunk).digest()).decode()}
    assert patch(client, upload, 1000, chunk, good_sum).status_code == 204
    too_long = patch(client, upload, 2000, data[2000:] + b"extra")
    assert too_long.status_code == 413
    assert patch(client, upload, 2000, data[2000:]).status_code == 204
    assert instance_count(data_dir) == 1


def test_bytes_never_acknowledged_are_cut_off(client, data_dir):
    """A crash after the write but before the offset's commit leaves bytes past the offset: the
    next PATCH writes over them, so the file is exactly what the client was told is stored."""
    data = dicom_bytes()
    upload = create(client, len(data))
    assert patch(client, upload, 0, data[:700]).status_code == 204
    with open(data_dir / "uploads" / upload, "ab") as fh:
        fh.write(b"\xff" * 5000)  # written, never recorded
    assert offset(client, upload) == 700
    assert patch(client, upload, 700, data[700:]).status_code == 204
    assert client.get(f"/uploads/{upload}").json()["status"] == "done"


@pytest.mark.parametrize(
    "method, path, headers, status",
    [
        ("POST", "/uploads/", {"Upload-Length": "10"}, 412),  # no Tus-Resumable
        ("POST", "/uploads/", TUS | {"Upload-Length": "10", "Tus-Resumable": "0.2.2"}, 412),
        ("POST", "/uploads/", TUS | {"Upload-Length": "-5"}, 400),
        ("POST", "/uploads/", TUS | {"Upload-Length": "1e9"}, 400),
        ("POST", "/uploads/", TUS | {"Upload-Length": "99999999999999999999999999"}, 400),
        ("POST", "/uploads/", TUS | {"Upload-Length": str(2**62)}, 413),
        ("POST", "/uploads/", TUS | {"Upload-Length": "0"}, 400),
        ("POST", "/uploads/", TUS, 400),  # no Upload-Length
        ("POST", "/uploads/", TUS | {"Upload-Defer-Length": "1"}, 400),
        ("POST", "/uploads/", TUS | {"Upload-Length": "10", "Upload-Metadata": "filename !!notbase64"}, 400),
        ("POST", "/uploads/", TUS | {"Upload-Length": "10", "Upload-Metadata": "filename " + base64.b64encode(b"\xff\xfe").decode()}, 400),
        ("POST", "/uploads/", TUS | {"Upload-Length": "10", "Upload-Metadata": "a YQ==,a YQ=="}, 400),
        ("POST", "/uploads/", TUS | {"Upload-Length": "10", "Upload-Metadata": "a b c"}, 400),
        ("POST", "/uploads/", TUS | {"Upload-Length": "10", "Upload-Metadata": ",".join(["k"] * 40)}, 400),
        ("PATCH", "/uploads/{id}", PATCH | {"Upload-Offset": "-1"}, 400),
        ("PATCH", "/uploads/{id}", PATCH | {"Upload-Offset": "x"}, 400),
        ("PATCH", "/uploads/{id}", PATCH, 400),  # no Upload-Offset
        ("PATCH", "/uploads/{id}", PATCH | {"Upload-Offset": "0", "Upload-Checksum": "crc32 AAAA"}, 400),
        ("PATCH", "/uploads/{id}", PATCH | {"Upload-Offset": "0", "Upload-Checksum": "sha1 ***"}, 400),
        ("PATCH", "/uploads/{id}", {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}, 412),
        ("PATCH", "/uploads/{id}", PATCH | {"Upload-Offset": "5"}, 409),
        ("PATCH", "/uploads/" + "0" * 32, PATCH | {"Upload-Offset": "0"}, 404),
        ("PATCH", "/uploads/../../etc", PATCH | {"Upload-Offset": "0"}, 404),
        ("DELETE", "/uploads/{id}", {}, 412),
        ("GET", "/uploads/not-an-id", {}, 404),
    ],
)
def test_hostile_headers_get_json_4xx(client, method, path, headers, status):
    upload = create(client, 100)
    answer = client.request(method, path.replace("{id}", upload), headers=headers, content=b"x" * 10)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] and answer.json()["detail"]
    assert answer.headers.get("tus-resumable") == "1.0.0" or status == 404


def test_delete_terminates(client, data_dir):
    upload = create(client, 5000)
    assert patch(client, upload, 0, b"a" * 100).status_code == 204
    answer = client.delete(f"/uploads/{upload}", headers=TUS)
    assert answer.status_code == 204
    assert client.head(f"/uploads/{upload}", headers=TUS).status_code == 404
    assert patch(client, upload, 100, b"b").status_code == 404
    assert not (data_dir / "uploads" / upload).exists()


def test_incomplete_uploads_expire_and_are_swept(data_dir, import_root):
    config = settings_config(data_dir, import_root, tus_expiry="1", tus_sweep_interval="1")
    with TestClient(create_app(config)) as client:
        upload = create(client, 5000)
        assert patch(client, upload, 0, b"a" * 100).status_code == 204
        kept = create(client, 5000)
        deadline = time.monotonic() + 30
        while (data_dir / "uploads" / upload).exists():
            assert time.monotonic() < deadline, "the expired upload was not swept"
            patch(client, kept, offset(client, kept), b"k")  # PATCHes move the expiry on
            time.sleep(0.2)
        assert client.head(f"/uploads/{upload}", headers=TUS).status_code == 404
        assert offset(client, kept) > 0  # one that was being written to is still there
        with index(data_dir) as db:
            assert db.execute("SELECT COUNT(*) FROM upload WHERE id = ?", (upload,)).fetchone()[0] == 0


def test_orphan_files_are_removed_at_start(data_dir, import_root):
    folder = data_dir / "uploads"
    folder.mkdir(parents=True)
    orphan = folder / ("ab" * 16)
    orphan.write_bytes(b"left by a crash")
    os.utime(orphan, (time.time() - 60, time.time() - 60))
    with TestClient(create_app(settings_config(data_dir, import_root))):
        deadline = time.monotonic() + 20
        while orphan.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_incomplete_uploads_per_user_are_limited(data_dir, import_root):
    with TestClient(create_app(settings_config(data_dir, import_root, tus_max_incomplete="2"))) as client:
        first, _ = create(client, 10), create(client, 10)
        answer = client.post("/uploads/", headers=TUS | {"Upload-Length": "10"})
        assert answer.status_code == 429 and answer.json()["error"] == "too_many_uploads"
        assert client.delete(f"/uploads/{first}", headers=TUS).status_code == 204
        create(client, 10)
        assert len(list((data_dir / "uploads").iterdir())) == 2


def test_an_upload_is_its_creators(monkeypatch, data_dir, import_root):
    users = {"ulla": "uploader", "uwe": "uploader", "rita": "reader", "adam": "admin"}
    with token_app(monkeypatch, data_dir, import_root, users) as (client, tokens):
        data = dicom_bytes()
        upload = create(client, len(data), bearer(tokens["ulla"]))
        assert patch(client, upload, 0, data[:100], bearer(tokens["ulla"])).status_code == 204
        for other in ("uwe", "adam"):
            who = bearer(tokens[other])
            assert client.head(f"/uploads/{upload}", headers=TUS | who).status_code == 404
            assert client.get(f"/uploads/{upload}", headers=who).status_code == 404
            assert patch(client, upload, 100, data[100:], who).status_code == 404
            assert client.delete(f"/uploads/{upload}", headers=TUS | who).status_code == 404
        assert client.post("/uploads/", headers=TUS | {"Upload-Length": "10"} | bearer(tokens["rita"])).status_code == 403
        assert client.post("/uploads/", headers=TUS | {"Upload-Length": "10"}).status_code == 401
        assert patch(client, upload, 100, data[100:], bearer(tokens["ulla"])).status_code == 204
    with index(data_dir) as db:  # the audit trail is flushed at shutdown
        assert db.execute("SELECT uploaded_by FROM dicom").fetchall() == [("ulla",)]
        audited = db.execute("""SELECT action, route, status, instance FROM audit WHERE "user" = 'ulla'""").fetchall()
        assert ("upload", "/uploads/", 201, None) in audited
        assert any(a == "upload" and route == "/uploads/{id}" and instance for a, route, _, instance in audited)


# Real connections: a raw socket, and tuspy through a proxy that cuts ------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """``dicomsvc serve`` on a free port (two worker processes, as by default)."""
    port = free_port()
    env = dict(os.environ) | {
        "DICOMSVC_DATA_DIR": str(tmp_path / "data"),
        "DICOMSVC_IMPORT_ROOT": str(tmp_path / "import"),
        "DICOMSVC_HOST": "127.0.0.1",
        "DICOMSVC_PORT": str(port),
        "DICOMSVC_LOG_LEVEL": "warning",
    } | database_env(tmp_path / "data")  # the suite on PostgreSQL: the server too
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "dicomsvc.cli.main", "serve"], cwd=REPO, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    try:
        yield port, url, tmp_path / "data"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_a_connection_broken_mid_chunk_keeps_what_arrived(server):
    port, url, data_dir = server
    data = dicom_bytes(make_ct(pixels=np.zeros((256, 256), dtype=np.int16)))
    with httpx.Client(base_url=url) as client:
        upload = create(client, len(data))
        half = len(data) // 2
        with socket.create_connection(("127.0.0.1", port)) as raw:
            head = (
                f"PATCH /uploads/{upload} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n"
            )
            raw.sendall(head.encode() + data[:half])
            time.sleep(0.3)
        deadline = time.monotonic() + 20
        while offset(client, upload) != half:  # the server records it once it sees the close
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = patch(client, upload, half, data[half:])
        assert answer.status_code == 204 and '"status":201' in answer.headers["upload-result"]


class CuttingProxy:
    """A TCP proxy to ``port`` that closes both sides of the connection it is forwarding when
    the client's bytes (over all connections) pass each of ``cuts``."""

    def __init__(self, port: int, cuts: list[int]) -> None:
        self.target, self.cuts, self.sent, self.cut = port, sorted(cuts), 0, 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if counted:
                    with self.lock:
                        limit = self.cuts[0] - self.sent if self.cuts else None
                        if limit is not None and len(data) >= limit:
                            self.cuts.pop(0)
                            self.sent += limit
                            self.cut += 1
                            dst.sendall(data[:limit])
                            raise ConnectionAbortedError
                        self.sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.listener.close()


def big_zip(path: Path, size: int) -> int:
    """A ZIP of pydicom's files and as many distinct 512x512 CT slices of noise (stored, so it
    does not shrink) as make it ``size`` bytes; how many instances it holds."""
    uids = {pydicom.dcmread(sample_file(n), stop_before_pixels=True).SOPInstanceUID for n in PYDICOM_FILES}
    assert len(uids) == len(PYDICOM_FILES)
    rng = np.random.default_rng(13)
    count = len(PYDICOM_FILES)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in PYDICOM_FILES:
            zf.write(sample_file(name), f"pydicom/{name}")
        study = pydicom.uid.generate_uid()
        while path.stat().st_size < size:
            pixels = rng.integers(0, 4000, size=(512, 512), dtype=np.int16)
            zf.writestr(f"ct/{count:05d}.dcm", dicom_bytes(make_ct(pixels, StudyInstanceUID=study)))
            count += 1
    return count


TUS_MB = int(os.environ.get("DICOMSVC_TEST_TUS_MB", "200"))  # the 200 MB; smaller to iterate


def test_tuspy_sends_a_big_zip_in_30_mb_chunks_through_two_cuts(server, tmp_path):
    from tusclient import client as tus_client

    port, url, data_dir = server
    archive = tmp_path / "big.zip"
    instances = big_zip(archive, TUS_MB * 1_000_000)
    size = archive.stat().st_size
    chunk = 30 * 1_000_000 * TUS_MB // 200
    proxy = CuttingProxy(port, [int(size * 0.22), int(size * 0.61)])  # mid-chunk, twice
    started = time.monotonic()
    try:
        client = tus_client.TusClient(f"http://127.0.0.1:{proxy.port}/uploads/")
        with open(archive, "rb") as stream:  # tuspy leaves the files it opens itself open
            uploader = client.uploader(
                file_stream=stream, chunk_size=chunk, retries=3, retry_delay=0, upload_checksum=True,
                metadata={"filename": "big.zip"},
            )  # fmt: skip
            uploader.upload()
    finally:
        proxy.close()
    assert proxy.cut == 2
    job = httpx.Response(200, content=uploader.request.response_headers["upload-result"]).json()
    if instances > 100:  # more than DICOMSVC_SYNC_LIMIT files: a job
        assert job["status"] == 202, job
        deadline = time.monotonic() + 600
        assert job["status_url"] == f"http://127.0.0.1:{proxy.port}/jobs/{job['job']}"  # as the client reached us
        status_url = f"{url}/jobs/{job['job']}"
        while (job := httpx.get(status_url).json())["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    print(f"tus: {size / 1e6:.0f} MB, {instances} instances, two cuts: uploaded and ingested in {elapsed:.1f} s")
    assert (job["created"], job["duplicates"], job["failed"]) == (instances, 0, 0)
    assert instance_count(data_dir) == instances
    listed = httpx.get(f"{url}/uploads/{uploader.url.rsplit('/', 1)[1]}").json()
    assert listed["status"] == "done" and listed["offset"] == size
    assert not list((data_dir / "uploads").iterdir())


def test_with_a_key_an_uploads_bytes_wait_sealed(data_dir, import_root):
    """Encryption at rest: each PATCH's bytes are one sealed record (storage.records), so an
    upload waiting for its next chunk holds no plaintext; a refused chunk leaves no record; a
    record altered on disk is a 422, never a 500; completed, the file is stored as sent, and a
    ZIP's job input waits sealed too."""
    from phi_fixture import build_phi_dataset, to_bytes

    key = bytes(range(7, 39))
    config = settings_config(data_dir, import_root, encryption_key=base64.b64encode(key).decode())
    ds, planted = build_phi_dataset()
    data = to_bytes(ds)
    with TestClient(create_app(config)) as client:
        upload = create(client, len(data), filename="phi.dcm")
        path = data_dir / "uploads" / upload
        for start in range(0, len(data) - 1000, 1000):  # all but the last chunk
            assert patch(client, upload, start, data[start : start + 1000]).status_code == 204
            raw = path.read_bytes()
            assert not any(m.encode() in raw for m in planted.markers) and b"DICM" not in raw
        received = offset(client, upload)
        assert stored_upload(path, received, key) == data[:received]
        bad_sum = {"Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()}
        size = path.stat().st_size
        assert patch(client, upload, received, data[received:], bad_sum).status_code == 460
        assert path.stat().st_size == size  # no record of the refused chunk
        with open(path, "r+b") as fh:  # a bit of the first record's ciphertext flipped
            fh.seek(200)
            byte = fh.read(1)
            fh.seek(200)
            fh.write(bytes([byte[0] ^ 1]))
        damaged = patch(client, upload, received, data[received:])
        assert damaged.status_code == 422 and damaged.json()["error"] == "damaged_blob", damaged.text
        # a fresh upload completes and is stored as sent
        upload = create(client, len(data), filename="phi.dcm")
        assert send(client, upload, data, 700).status_code == 204
        outcome = client.get(f"/uploads/{upload}").json()
        stored = client.get(f"/dicom/{outcome['result']['id']}/file")
        assert stored.status_code == 200 and stored.content == data
        # a ZIP sent as a job: its records' plaintext sealed again as the job's spool file
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("phi.dcm", data)
        upload = create(client, len(zipped.getvalue()), filename="phi.zip", **{"async": "1"})
        assert send(client, upload, zipped.getvalue(), 4096).status_code == 204
        job = client.get(f"/uploads/{upload}").json()["result"]["job"]
        done = wait_for(client, f"/jobs/{job}")
        assert (done["status"], done["duplicates"], done["failed"]) == ("done", 1, 0), done
