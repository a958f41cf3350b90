"""The bulk importer (``dicomsvc import``) against a fake server built on ``httpx.MockTransport``."""

import hashlib
import io
import os
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import httpx
import pytest

from dicomfiles import sample_file
from dicomsvc.cli import main as cli
from dicomsvc.cli.importer import CHUNK_SIZE, Failure, ImportSummary, collect, format_summary, import_paths

URL = "http://dicomsvc.test"
PATIENT_NAME = "CompressedSamples^CT1"  # CT_small.dcm's patient: must never be printed


def is_dicom(body: bytes) -> bool:
    return body[128:132] == b"DICM"


class FakeServer:
    """Enough of the upload contract: ids by content hash, 422 for non-DICOM, ZIPs as batch or job.

    ``zip_mode`` is ``"batch"`` (200 with results) or ``"job"`` (202, then ``/jobs/<id>``
    answers queued, running, then done). ``hook(request)`` may answer or raise first.
    """

    def __init__(self, zip_mode: str = "batch", hook=None, gate: int = 0) -> None:
        self.zip_mode = zip_mode
        self.hook = hook
        self.gate = gate  # hold the first POSTs until this many are in flight at once (or 2 s)
        self.lock = threading.Condition()
        self.ids: dict[str, str] = {}
        self.jobs: dict[str, list[dict]] = {}
        self.posts: list[httpx.Request] = []
        self.bodies: dict[str, int] = {}  # upload's Content-Length by file name
        self.job_polls: list[str] = []
        self.streams: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0

    # One instance -----------------------------------------------------------
    def store(self, body: bytes) -> tuple[str, bool]:
        key = hashlib.sha256(body).hexdigest()
        with self.lock:
            created = key not in self.ids
            if created:
                self.ids[key] = key[:22]
            return self.ids[key], created

    def batch(self, body: bytes) -> dict:
        results = []
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if info.filename.startswith("__MACOSX/") or Path(info.filename).name.startswith("."):
                    results.append({"file": info.filename, "status": "skipped", "detail": "not a DICOM name"})
                    continue
                data = zf.read(info)
                if not is_dicom(data):
                    results.append(
                        {"file": info.filename, "status": "failed", "error": "invalid_dicom", "detail": "not DICOM"}
                    )
                    continue
                instance_id, created = self.store(data)
                status = "created" if created else "duplicate"
                results.append({"file": info.filename, "id": instance_id, "status": status})
        counts = {k: sum(r["status"] == s for r in results) for k, s in
                  [("created", "created"), ("duplicates", "duplicate"), ("failed", "failed"), ("skipped", "skipped")]}
        return {**counts, "results": results}

    # HTTP ------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.hook is not None:
            answer = self.hook(request)
            if answer is not None:
                return answer
        if request.method == "GET" and request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if request.method == "GET" and request.url.path.startswith("/jobs/"):
            job = request.url.path.removeprefix("/jobs/")
            with self.lock:
                self.job_polls.append(job)
                states = self.jobs.get(job)
                if not states:
                    return httpx.Response(404, json={"error": "not_found", "detail": "no such job"})
                state = states.pop(0) if len(states) > 1 else states[0]
            return httpx.Response(200, json=state)
        if request.method == "POST" and request.url.path == "/dicom":
            with self.lock:
                self.posts.append(request)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.lock.notify_all()
                if self.gate:
                    self.lock.wait_for(lambda: self.max_in_flight >= self.gate, timeout=2.0)
            try:
                return self.post(request)
            finally:
                with self.lock:
                    self.in_flight -= 1
        return httpx.Response(404, json={"error": "not_found", "detail": "no such route"})

    def post(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        kind = request.headers.get("content-type")
        if kind == "application/zip":
            result = self.batch(body)
            if self.zip_mode == "batch":
                return httpx.Response(200, json=result)
            job = f"job{len(self.jobs) + 1}"
            total = len(result["results"])
            common = {"id": job, "total": total, "created": 0, "duplicates": 0, "failed": 0, "skipped": 0}
            self.jobs[job] = [
                {**common, "status": "queued", "processed": 0, "progress": 0, "results": []},
                {**common, "status": "running", "processed": 1, "progress": 50, "results": result["results"][:1]},
                {**result, "id": job, "status": "done", "total": total, "processed": total, "progress": 100},
            ]
            return httpx.Response(202, json={"job": job, "status_url": f"/jobs/{job}"})
        if kind != "application/dicom":
            return httpx.Response(415, json={"error": "bad_request", "detail": "content type"})
        if not is_dicom(body):
            return httpx.Response(422, json={"error": "invalid_dicom", "detail": "not a DICOM file"})
        instance_id, created = self.store(body)
        return httpx.Response(201 if created else 200, json={"id": instance_id})

    @property
    def transport(self) -> httpx.BaseTransport:
        return StreamCheckingTransport(self)


class StreamCheckingTransport(httpx.MockTransport):
    """A MockTransport that first records how each request body arrives (MockTransport reads it whole)."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__(server.handle)
        self.server = server

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            streamed = not isinstance(request.stream, httpx.ByteStream)
            chunks = list(request.stream)
            with self.server.lock:
                self.server.streams.append(
                    {
                        "streamed": streamed,
                        "chunks": [len(c) for c in chunks],
                        "content_length": request.headers.get("content-length"),
                        "transfer_encoding": request.headers.get("transfer-encoding"),
                    }
                )
            request.stream = httpx.ByteStream(b"".join(chunks))
        return super().handle_request(request)


# Test trees -------------------------------------------------------------------


def copy_sample(name: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample_file(name), target)
    return target


def make_zip(target: Path, members: dict[str, bytes]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return target


def run(paths, server: FakeServer, **kwargs) -> ImportSummary:
    kwargs.setdefault("poll_interval", 0)
    return import_paths([str(p) for p in paths], URL, transport=server.transport, **kwargs)


# Single files -------------------------------------------------------------------


def test_single_files_created_duplicate_and_failed(tmp_path):
    ct = copy_sample("CT_small.dcm", tmp_path / "ct.dcm")
    mr = copy_sample("MR_small.dcm", tmp_path / "mr.dcm")
    again = copy_sample("CT_small.dcm", tmp_path / "ct-again.dcm")
    junk = tmp_path / "notes.txt"
    junk.write_text("not dicom")
    server = FakeServer()

    summary = run([ct, mr, again, junk], server)

    assert (summary.created, summary.duplicates, summary.failed, summary.skipped) == (2, 1, 1, 0)
    assert summary.uploads == 4
    assert summary.failures == [Failure(str(junk), "invalid_dicom", "not a DICOM file")]
    assert summary.exit_code == 1
    assert summary.bytes_sent == sum(p.stat().st_size for p in (ct, mr, again, junk))
    assert {r.headers["content-type"] for r in server.posts} == {"application/dicom"}
    assert all(r.url.path == "/dicom" and not r.url.query for r in server.posts)


def test_rerun_reports_duplicates_and_exits_zero(tmp_path):
    copy_sample("CT_small.dcm", tmp_path / "tree" / "a.dcm")
    copy_sample("MR_small.dcm", tmp_path / "tree" / "sub" / "b.dcm")
    server = FakeServer()

    first = run([tmp_path / "tree"], server)
    second = run([tmp_path / "tree"], server)

    assert (first.created, first.duplicates, first.exit_code) == (2, 0, 0)
    assert (second.created, second.duplicates, second.failed, second.exit_code) == (0, 2, 0, 0)


def test_anonymize_adds_the_query(tmp_path):
    ct = copy_sample("CT_small.dcm", tmp_path / "ct.dcm")
    archive = make_zip(tmp_path / "a.zip", {"x.dcm": ct.read_bytes()})
    server = FakeServer()

    run([ct, archive], server, anonymize=True)

    assert [dict(r.url.params) for r in server.posts] == [{"anonymize": "true"}] * 2


def test_warnings_are_counted(tmp_path):
    ct = copy_sample("CT_small.dcm", tmp_path / "ct.dcm")

    def warn(request):
        if request.method == "POST":
            return httpx.Response(201, json={"id": "x" * 22, "warnings": ["pixel data could not be decoded"]})

    summary = run([ct], FakeServer(hook=warn))
    assert (summary.created, summary.warnings, summary.exit_code) == (1, 1, 0)


def test_files_stored_with_warnings_are_named_in_the_summary(tmp_path):
    # issue 8: the summary said how many files were stored with warnings, not which
    warned = [copy_sample("CT_small.dcm", tmp_path / f"warn{i:02d}.dcm") for i in range(12)]
    clean = copy_sample("MR_small.dcm", tmp_path / "clean.dcm")
    archive = make_zip(tmp_path / "a.zip", {"x.dcm": clean.read_bytes()})

    def warn(request):
        if request.method != "POST":
            return None
        if request.headers["content-type"] == "application/zip":
            results = [{"file": "x.dcm", "id": "z" * 22, "status": "created", "warnings": ["w zip"]}]
            return httpx.Response(200, json={"created": 1, "duplicates": 0, "failed": 0, "results": results})
        name = request.headers["content-disposition"].split('"')[1]
        body = {"id": name.ljust(22, "x")}
        if name.startswith("warn"):
            body["warnings"] = [f"pixel data could not be decoded ({name})", "second"]
        return httpx.Response(201, json=body)

    summary = run([clean, archive, *reversed(warned)], FakeServer(hook=warn), jobs=3)
    assert (summary.created, summary.warnings, summary.failed, summary.exit_code) == (14, 13, 0, 0)
    assert [w.file for w in summary.warned] == sorted([f"{archive}!x.dcm", *map(str, warned)])
    text = format_summary(summary)
    lines = text.splitlines()
    start = lines.index("stored with warnings (first 10 of 13):")
    listed = lines[start + 1 : start + 11]
    assert listed[0] == f"  {archive}!x.dcm: w zip"
    assert listed[1] == f"  {warned[0]}: pixel data could not be decoded (warn00.dcm); second"
    assert lines[start + 11 :] == ["  ... and 3 more"]
    assert "13 stored with warnings" in lines and str(clean) not in text

    few = format_summary(summary, max_warned=20)
    assert "stored with warnings:" in few.splitlines() and "more" not in few
    assert f"  {warned[11]}: pixel data could not be decoded (warn11.dcm); second" in few


# Walking ------------------------------------------------------------------------


def test_folder_walk_recurses_and_passes_over_hidden_and_system_files(tmp_path):
    root = tmp_path / "tree"
    wanted = [
        copy_sample("CT_small.dcm", root / "a.dcm"),
        copy_sample("MR_small.dcm", root / "s1" / "s2" / "IM0001"),
        copy_sample("rtplan.dcm", root / "s1" / "plan.dcm"),
    ]
    copy_sample("CT_small.dcm", root / ".DS_Store")
    copy_sample("CT_small.dcm", root / ".git" / "objects" / "x.dcm")
    copy_sample("CT_small.dcm", root / "__MACOSX" / "s1" / "._IM0001")
    copy_sample("CT_small.dcm", root / "s1" / "Thumbs.db")
    os.mkfifo(root / "s1" / "pipe")  # opening it would block: never touched
    (root / "s1" / "dangling").symlink_to(root / "missing")
    server = FakeServer()

    uploads, ignored, failures = collect([root])
    summary = run([root], server)

    assert [u.path for u in uploads] == [wanted[0], wanted[2], wanted[1]]  # name order, depth first
    assert all(u.kind == "dicom" for u in uploads)
    assert (ignored, failures) == (6, [])
    assert (summary.created, summary.ignored, summary.failed, summary.exit_code) == (3, 6, 0, 0)
    assert len(server.posts) == 3


def test_explicit_paths_missing_or_repeated(tmp_path):
    ct = copy_sample("CT_small.dcm", tmp_path / "d" / "ct.dcm")
    hidden = copy_sample("MR_small.dcm", tmp_path / ".hidden.dcm")
    server = FakeServer()

    summary = run([tmp_path / "nope", tmp_path / "d", ct, hidden], server)

    # a name given on the command line is uploaded even when hidden; each file once
    assert len(server.posts) == 2
    assert (summary.created, summary.failed, summary.exit_code) == (2, 1, 1)
    assert summary.failures == [Failure(str(tmp_path / "nope"), "not_found", "no such file or directory")]


# ZIP archives -------------------------------------------------------------------


def zip_tree(tmp_path: Path) -> Path:
    return make_zip(
        tmp_path / "study.ZIP",
        {
            "s/ct.dcm": sample_file("CT_small.dcm").read_bytes(),
            "s/mr.dcm": sample_file("MR_small.dcm").read_bytes(),
            "__MACOSX/s/._ct.dcm": b"resource fork",
            "s/readme.txt": b"hello",
        },
    )


def test_zip_answered_with_a_batch(tmp_path):
    archive = zip_tree(tmp_path)
    server = FakeServer(zip_mode="batch")

    summary = run([archive], server)

    assert [r.headers["content-type"] for r in server.posts] == ["application/zip"]
    assert (summary.created, summary.duplicates, summary.skipped, summary.failed) == (2, 0, 1, 1)
    assert summary.failures == [Failure(f"{archive}!s/readme.txt", "invalid_dicom", "not DICOM")]
    assert summary.exit_code == 1
    assert server.job_polls == []

    again = run([archive], server)
    assert (again.created, again.duplicates, again.skipped, again.failed) == (0, 2, 1, 1)


def test_zip_answered_202_is_polled_until_done(tmp_path):
    archive = zip_tree(tmp_path)
    server = FakeServer(zip_mode="job")

    summary = run([archive], server)

    assert server.job_polls == ["job1", "job1", "job1"]  # queued, running, done
    assert (summary.created, summary.duplicates, summary.skipped, summary.failed) == (2, 0, 1, 1)
    assert summary.failures == [Failure(f"{archive}!s/readme.txt", "invalid_dicom", "not DICOM")]
    assert summary.uploads == 1


def test_a_failed_job_is_a_failure(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"ct.dcm": sample_file("CT_small.dcm").read_bytes()})

    def hook(request):
        if request.method == "POST":
            return httpx.Response(202, json={"job": "j9", "status_url": "/jobs/j9"})
        if request.url.path == "/jobs/j9":
            return httpx.Response(
                200,
                json={"id": "j9", "status": "failed", "total": 1, "processed": 0, "created": 0, "duplicates": 0,
                      "failed": 0, "skipped": 0, "progress": 0, "results": [],
                      "error": "invalid_zip", "detail": "not a ZIP archive"},
            )

    summary = run([archive], FakeServer(hook=hook))

    assert summary.failures == [Failure(str(archive), "invalid_zip", "not a ZIP archive")]
    assert (summary.failed, summary.exit_code) == (1, 1)


def test_an_unknown_job_is_a_failure(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"ct.dcm": sample_file("CT_small.dcm").read_bytes()})

    def hook(request):
        if request.method == "POST":
            return httpx.Response(202, json={"job": "gone", "status_url": "/jobs/gone"})

    summary = run([archive], FakeServer(hook=hook))
    assert summary.failures == [Failure(str(archive), "not_found", "no such job")]
    assert summary.exit_code == 1


# Failures and connection errors -------------------------------------------------------


def test_a_failing_file_never_stops_the_rest(tmp_path):
    files = [copy_sample("CT_small.dcm", tmp_path / f"{i}.dcm") for i in range(3)]
    files += [copy_sample("MR_small.dcm", tmp_path / "mr.dcm"), copy_sample("rtplan.dcm", tmp_path / "plan.dcm")]
    big = tmp_path / "big.dcm"
    big.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 100)

    def hook(request):
        if request.method != "POST":
            return None
        size = int(request.headers["content-length"])
        if size == big.stat().st_size:
            return httpx.Response(413, json={"error": "too_large", "detail": "over 4294967296 bytes"})
        if size == files[3].stat().st_size:
            raise httpx.ReadTimeout("timed out", request=request)
        if size == files[4].stat().st_size:
            return httpx.Response(502, text="<html>bad gateway</html>")
        return None

    summary = run(files + [big], FakeServer(hook=hook), jobs=2)

    assert (summary.created, summary.duplicates, summary.failed) == (1, 2, 3)
    assert summary.exit_code == 1
    assert sorted(summary.failures, key=lambda f: f.file) == sorted(
        [
            Failure(str(big), "too_large", "over 4294967296 bytes"),
            Failure(str(files[3]), "timeout", "ReadTimeout"),
            Failure(str(files[4]), "http_502", "Bad Gateway"),
        ],
        key=lambda f: f.file,
    )


def test_server_down_before_the_first_upload(tmp_path):
    ct = copy_sample("CT_small.dcm", tmp_path / "ct.dcm")

    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    server = FakeServer(hook=refuse)
    summary = run([ct, tmp_path], server)

    assert summary.exit_code == 2
    assert summary.unreachable == f"cannot reach the server at {URL}: [Errno 111] Connection refused"
    assert (summary.not_sent, summary.uploads, server.posts) == (1, 0, [])


def test_server_going_down_stops_the_run(tmp_path):
    files = [copy_sample("CT_small.dcm", tmp_path / f"{i:02}.dcm") for i in range(10)]
    calls = []

    def die_after_two(request):
        if request.method == "POST":
            calls.append(request)
            if len(calls) > 2:
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    summary = run(files, FakeServer(hook=die_after_two), jobs=1)

    assert summary.exit_code == 2
    assert (summary.created, summary.duplicates) == (1, 1)
    assert summary.not_sent == 8 and len(calls) == 3  # nothing attempted once the server was gone


def test_cli_exit_code_2_when_nothing_listens(tmp_path, capsys):
    ct = copy_sample("CT_small.dcm", tmp_path / "ct.dcm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connecting is refused

    code = cli.main(["import", "--url", f"http://127.0.0.1:{port}", str(ct)])

    out, err = capsys.readouterr()
    assert code == 2
    assert f"cannot reach the server at http://127.0.0.1:{port}" in err
    assert "1 not sent" in out


def test_cli_rejects_bad_jobs(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["import", "--jobs", "0", "x"])
    assert exc.value.code == 2
    assert "--jobs" in capsys.readouterr().err


# Parallelism and streaming ---------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 4])
def test_jobs_uploads_run_in_parallel(tmp_path, jobs):
    files = [copy_sample("CT_small.dcm", tmp_path / f"{i}.dcm") for i in range(8)]
    server = FakeServer(gate=jobs)

    summary = run(files, server, jobs=jobs)

    assert server.max_in_flight == jobs
    assert (summary.created, summary.duplicates, summary.exit_code) == (1, 7, 0)


def test_big_files_are_streamed_in_chunks(tmp_path):
    big = tmp_path / "big.dcm"
    data = sample_file("CT_small.dcm").read_bytes()
    big.write_bytes(data + b"\0" * (3 * 1024 * 1024))  # trailing padding: still DICM at 128
    archive = make_zip(tmp_path / "big.zip", {"a.dcm": os.urandom(2 * 1024 * 1024)})
    server = FakeServer()

    summary = run([big, archive], server)

    assert summary.created == 1 and summary.bytes_sent == big.stat().st_size + archive.stat().st_size
    by_length = {record["content_length"]: record for record in server.streams}
    for path in (big, archive):
        record = by_length[str(path.stat().st_size)]  # a Content-Length, not chunked
        assert record["streamed"]  # an iterator over the file, not bytes in memory
        assert record["transfer_encoding"] is None
        assert max(record["chunks"]) <= CHUNK_SIZE
        assert sum(record["chunks"]) == path.stat().st_size
        assert len(record["chunks"]) >= path.stat().st_size // CHUNK_SIZE


# Output ---------------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_plain_when_not_a_tty(tmp_path):
    files = [copy_sample("CT_small.dcm", tmp_path / f"{i}.dcm") for i in range(3)]
    out = io.StringIO()

    run(files, FakeServer(), jobs=1, progress=out, progress_interval=0)

    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) >= 2
    assert lines[-1].startswith("import: 3/3 uploads, ")
    assert "MB/s" in lines[-1] and "created 1, duplicates 2, failed 0" in lines[-1]
    assert PATIENT_NAME not in out.getvalue()


def test_progress_redrawn_in_place_on_a_tty(tmp_path):
    files = [copy_sample("CT_small.dcm", tmp_path / f"{i}.dcm") for i in range(3)]
    out = Tty()

    run(files, FakeServer(), jobs=1, progress=out, progress_interval=0)

    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert text.rstrip().rsplit("\r", 1)[-1].startswith("import: 3/3 uploads")


def test_summary_names_files_and_codes_only(tmp_path):
    ct = copy_sample("CT_small.dcm", tmp_path / "ct.dcm")
    junk = [tmp_path / f"junk{i}.txt" for i in range(12)]
    for j in junk:
        j.write_bytes(b"x" * 200)

    summary = run([ct, *junk], FakeServer(), jobs=3)
    text = format_summary(summary, max_failures=10)

    assert summary.exit_code == 1
    assert text.splitlines()[0] == "created 1, duplicates 0, skipped 0, failed 12"
    assert "failures (first 10 of 12):" in text
    assert sum(line.startswith("  ") for line in text.splitlines()) == 10
    assert f"  {junk[0]}: invalid_dicom (not a DICOM file)" in text
    assert PATIENT_NAME not in text and "xxxx" not in text


def test_summary_of_a_clean_run(tmp_path):
    summary = ImportSummary(created=3, duplicates=1, uploads=4, bytes_sent=2_500_000, seconds=2.0, ignored=2)
    assert format_summary(summary) == (
        "created 3, duplicates 1, skipped 0, failed 0\n"
        "4 uploads, 2.5 MB in 2.0 s (1.2 MB/s)\n"
        "2 hidden, system, non-regular or non-DICOM files passed over"
    )
    assert summary.exit_code == 0


# End to end ------------------------------------------------------------------------


@pytest.fixture
def config(data_dir, import_root):
    """As conftest's (CPU work in threads), but more than 3 files in one request make a job."""
    from dicomsvc.config import Config

    return Config.from_env(
        {
            "DICOMSVC_DATA_DIR": str(data_dir),
            "DICOMSVC_IMPORT_ROOT": str(import_root),
            "DICOMSVC_WORKERS": "0",
            "DICOMSVC_SYNC_LIMIT": "3",
        }
    )


class RecordingTransport(httpx.BaseTransport):
    """The real network, noting each request's method and path."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_end_to_end_against_the_real_server(tmp_path, live_server, capsys):
    tree = tmp_path / "tree"
    copy_sample("CT_small.dcm", tree / "ct.dcm")
    copy_sample("MR_small.dcm", tree / "series" / "IM1")
    copy_sample("rtplan.dcm", tree / "series" / "deeper" / "plan.dcm")
    copy_sample("CT_small.dcm", tree / ".DS_Store")
    make_zip(  # 3 members: answered at once
        tree / "small.zip",
        {"a/jpeg.dcm": sample_file("JPEG2000.dcm").read_bytes(), "__MACOSX/a/._jpeg.dcm": b"fork",
         "a/readme.txt": b"not an instance"},
    )
    make_zip(  # 5 members: a background job, polled
        tree / "big.zip",
        {f"s/{name}": sample_file(name).read_bytes()
         for name in ("MR_small_RLE.dcm", "SC_rgb_rle.dcm", "rtdose_1frame.dcm", "image_dfl.dcm", "CT_small.dcm")},
    )

    network = RecordingTransport()
    first = import_paths([str(tree)], live_server, jobs=3, poll_interval=0.05, transport=network)

    assert first.unreachable is None and first.failures == [], format_summary(first)
    # ct.dcm and big.zip's CT_small.dcm are one instance: whichever comes second is a duplicate
    assert (first.created, first.duplicates, first.failed, first.ignored) == (8, 1, 0, 1)
    assert first.skipped == 2  # __MACOSX and the README, by the server
    assert first.uploads == 5 and first.exit_code == 0
    assert ("POST", "/dicom") in network.seen and any(p.startswith("/jobs/") for _, p in network.seen)

    code = cli.main(["import", "--url", live_server, "--jobs", "2", str(tree)])

    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert out.splitlines()[0] == "created 0, duplicates 9, skipped 2, failed 0"
    assert PATIENT_NAME not in out + err


def test_walk_passes_over_files_that_cannot_be_dicom(tmp_path):
    (tmp_path / "README.txt").write_text("hello")
    (tmp_path / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    shutil.copyfile(sample_file("CT_small.dcm"), tmp_path / "ct.dcm")
    uploads, ignored, failures = collect([tmp_path])
    assert [u.path.name for u in uploads] == ["ct.dcm"] and ignored == 2 and failures == []
    uploads, _, _ = collect([tmp_path / "README.txt"])  # named on the command line: always sent
    assert [u.path.name for u in uploads] == ["README.txt"]


def test_big_files_go_as_resumable_uploads_and_survive_broken_connections(tmp_path, live_server):
    """Over --resumable-over, a file is a tus upload in chunks: two connections cut mid-chunk
    cost a chunk each, not the file, and everything is stored once."""
    from test_tus import CuttingProxy

    big_dcm = copy_sample("CT_small.dcm", tmp_path / "ct.dcm")  # 39 KB
    big_zip = make_zip(  # stored: about 26 KB, more than the threshold
        tmp_path / "study.zip", {f"s/{n}": sample_file(n).read_bytes() for n in ("MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm")}
    )
    small = copy_sample("rtdose_1frame.dcm", tmp_path / "small.dcm")
    threshold, chunk = 12_000, 8_192
    assert small.stat().st_size < threshold < min(big_dcm.stat().st_size, big_zip.stat().st_size)
    port = int(live_server.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, [25_000, 50_000])  # client bytes: inside the first two uploads' chunks
    network = RecordingTransport()
    try:
        summary = import_paths(
            [str(big_dcm), str(big_zip), str(small)], f"http://127.0.0.1:{proxy.port}", jobs=1, transport=network,
            resumable_over=threshold, resumable_chunk=chunk, retry_delay=0.05, poll_interval=0.05,
        )  # fmt: skip
    finally:
        proxy.close()
    assert summary.failures == [] and summary.unreachable is None, format_summary(summary)
    assert (summary.created, summary.duplicates, summary.failed, summary.uploads) == (5, 0, 0, 3)
    assert proxy.cut == 2
    patches = [p for m, p in network.seen if m == "PATCH"]
    assert len({p for p in patches}) == 2 and all(p.startswith("/uploads/") for p in patches)
    assert ("POST", "/dicom") in network.seen  # the small file, posted whole
    total = sum(p.stat().st_size for p in (big_dcm, big_zip, small))
    assert summary.bytes_sent <= total + 2 * chunk  # each cut cost at most the chunk in flight
    # again: every instance is a duplicate, nothing is stored twice
    again = import_paths([str(big_dcm), str(big_zip)], live_server, jobs=2, resumable_over=threshold, resumable_chunk=chunk)
    assert (again.created, again.duplicates, again.failed) == (0, 4, 0), format_summary(again)


def test_resumable_over_on_the_command_line(tmp_path, live_server, capsys):
    big = copy_sample("CT_small.dcm", tmp_path / "ct.dcm")
    assert cli.main(["import", "--url", live_server, "--resumable-over", "1000", str(big)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "created 1, duplicates 0, skipped 0, failed 0"
    with pytest.raises(SystemExit):
        cli.main(["import", "--url", live_server, "--resumable-over", "-1", str(big)])
