"""Slow clients against a real ``dicomsvc serve`` process (issue 9): a deadline for request
headers (DICOMSVC_HEADER_TIMEOUT) and for idle kept-alive connections (DICOMSVC_KEEPALIVE_TIMEOUT)."""

import dataclasses
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from dicomsvc.cli.server import protocol_class, uvicorn_config
from dicomsvc.config import Config
from test_audit import rows

REPO = Path(__file__).resolve().parent.parent
HEADER_TIMEOUT = 2  # seconds, for the server under test


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """``dicomsvc serve`` on a free port, with a 2 s header deadline and a 1 s keep-alive."""
    port = free_port()
    env = dict(os.environ) | {
        "DICOMSVC_DATA_DIR": str(tmp_path / "data"),
        "DICOMSVC_IMPORT_ROOT": str(tmp_path / "import"),
        "DICOMSVC_HOST": "127.0.0.1",
        "DICOMSVC_PORT": str(port),
        "DICOMSVC_WORKERS": "0",
        "DICOMSVC_LOG_LEVEL": "warning",
        "DICOMSVC_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "DICOMSVC_KEEPALIVE_TIMEOUT": "1",
    }
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomsvc.cli.main", "serve"], cwd=REPO, env=env, stdout=log, stderr=log
    )
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
        yield port, url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def closed_by_server(sock: socket.socket, received: bytearray) -> bool:
    """Whether the server has closed ``sock``; what it sent is added to ``received``."""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        if not chunk:
            return True
        received += chunk


def test_a_hundred_clients_sending_a_byte_a_second_are_cut_off_and_healthz_stays_quick(server):
    port, url = server
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n"
    slow = {connect(port): 0 for _ in range(100)}
    received = {sock: bytearray() for sock in slow}
    answers: dict[socket.socket, bytes] = {}
    latencies = []
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=10) as http:
        while slow and time.monotonic() - started < HEADER_TIMEOUT + 20:  # a liveness bound
            for sock, sent in list(slow.items()):
                if closed_by_server(sock, received[sock]):
                    answers[sock] = bytes(received[sock])
                    del slow[sock]
                    continue
                try:
                    sock.send(request[sent : sent + 1])  # one byte per client per round
                    slow[sock] = sent + 1
                except (BrokenPipeError, ConnectionResetError):
                    closed_by_server(sock, received[sock])
                    answers[sock] = bytes(received[sock])
                    del slow[sock]
            t0 = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.5)
    elapsed = time.monotonic() - started
    for sock in list(slow) + list(answers):
        sock.close()
    assert not slow, f"{len(slow)} slow clients still connected after {elapsed:.1f} s"
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers.values())
    assert statistics.median(latencies) < 0.1 and max(latencies) < 2, latencies  # liveness bounds


def test_a_connection_that_never_sends_a_byte_is_closed(server):
    port, _ = server
    sock = connect(port)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    try:
        assert selector.select(timeout=HEADER_TIMEOUT + 20), "never closed"
        received = bytearray()
        assert closed_by_server(sock, received) and received == b""  # no 408: no request began
    finally:
        selector.close()
        sock.close()


def test_an_idle_kept_alive_connection_is_closed_and_a_trickled_second_request_too(server):
    port, _ = server
    for trickle in (False, True):
        sock = connect(port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        received, deadline = bytearray(), time.monotonic() + HEADER_TIMEOUT + 20
        second, sent = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n", 0
        while time.monotonic() < deadline:
            if closed_by_server(sock, received):
                break
            if trickle and b"\r\n\r\n" in received:
                try:  # the next request, a byte at a time: its first byte cancels uvicorn's keep-alive timer
                    sent += sock.send(second[sent : sent + 1])
                except OSError:
                    pass
            time.sleep(0.2)
        else:
            pytest.fail(f"connection never closed (trickle={trickle})")
        sock.close()
        assert received.startswith(b"HTTP/1.1 200 ")
        assert (b"HTTP/1.1 408 " in received) == trickle  # only a request begun is answered 408


def test_the_settings_reach_uvicorn():
    config = Config.from_env(
        {"DICOMSVC_DATA_DIR": "/tmp/x", "DICOMSVC_HEADER_TIMEOUT": "7", "DICOMSVC_KEEPALIVE_TIMEOUT": "3"}
    )
    built = uvicorn_config(lambda scope, receive, send: None, config)
    assert built.timeout_keep_alive == 3 and built.http.header_timeout == 7.0
    assert protocol_class(1).header_timeout == 1.0
    for bad in ("0", "x"):
        with pytest.raises(ValueError, match="HEADER_TIMEOUT"):
            Config.from_env({"DICOMSVC_HEADER_TIMEOUT": bad})


def test_once_started_the_server_lets_go_of_the_library_pages_only_starting_ran(monkeypatch):
    """Issue 12: ``dicomsvc serve`` unmaps them (``libpages.release``, tested in test_libpages)
    once the lifespan is done and the socket is listening, not before."""
    import asyncio
    import threading

    import uvicorn

    from dicomsvc import libpages
    from dicomsvc.cli.server import Server

    seen = []

    async def app(scope, receive, send):  # a lifespan that takes a moment
        assert scope["type"] == "lifespan"
        await receive()
        await asyncio.sleep(0.2)
        seen.append("lifespan started")
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    def released():
        seen.append(("released", server.started, len(server.servers)))
        server.should_exit = True
        return 0

    monkeypatch.setattr(libpages, "release", released)
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    deadline = time.monotonic() + 30
    while thread.is_alive() and not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    thread.join(timeout=2)  # the spy stops it; without a call, stopped here
    server.should_exit = True
    thread.join(timeout=30)
    assert seen == ["lifespan started", ("released", True, 1)]


# --- cached reads answered by the protocol itself (HotReads.answer_now; issue 12) ---


@pytest.fixture
def in_process(tmp_path, import_root, put, monkeypatch):
    """The app under uvicorn as ``dicomsvc serve`` configures it, in a thread of this process (so
    its calls can be looked at); yields (port, app, targets the protocol answered, stop)."""
    import threading

    import uvicorn

    from app import create_app
    from dicomsvc.http.hotreads import HotReads

    answered = []  # the targets HotReads.answer_now answered (the protocol's path)
    original = HotReads.answer_now

    def spy(self, state, url, headers, client, write):
        done = original(self, state, url, headers, client, write)
        if done:
            answered.append(url)
        return done

    monkeypatch.setattr(HotReads, "answer_now", spy)
    port = free_port()
    config = Config.from_env({
        "DICOMSVC_DATA_DIR": str(tmp_path / "data"), "DICOMSVC_IMPORT_ROOT": str(import_root),
        "DICOMSVC_WORKERS": "0", "DICOMSVC_HOST": "127.0.0.1", "DICOMSVC_PORT": str(port),
        "DICOMSVC_LOG_LEVEL": "warning", "DICOMSVC_KEEPALIVE_TIMEOUT": "1",
    })  # fmt: skip
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config))
    thread = threading.Thread(target=server.run)
    thread.start()

    def stop():
        server.should_exit = True
        thread.join(timeout=60)

    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield port, app, answered, stop
    finally:
        stop()


def exchange(port: int, *requests: bytes, answers: int | None = None) -> list[bytes]:
    """Send ``requests`` on one connection (together: pipelined) and read ``answers`` answers
    (one per request unless said), each as its raw bytes (head and body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        data, found = b"", []
        while len(found) < (len(requests) if answers is None else answers):
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                head = data[:head_end].lower()
                length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) if b"content-length: " in head else 0
                if len(data) >= head_end + 4 + length:
                    found.append(data[: head_end + 4 + length])
                    data = data[head_end + 4 + length :]
                    continue
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(found)} answers"
            data += chunk
        return found


def get(target: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", "Host: test", *headers]) + "\r\n\r\n").encode()


def without_date(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.lower().startswith(b"date: "))


def test_a_cached_read_is_answered_by_the_protocol_as_the_app_answers_it(in_process, put, tmp_path):
    """Byte for byte (but the Date) what the app's HotReads middleware answers, for /image, its
    304 and /tags; the log line, metrics and audit record as for a request through the app."""
    port, app, answered, stop = in_process
    name = put("CT_small.dcm")
    made = httpx.post(f"http://127.0.0.1:{port}/dicom", json={"path": name})
    assert made.status_code == 201
    instance = made.json()["id"]
    targets = [f"/image?id={instance}", f"/tags?id={instance}"]
    exchange(port, *(get(t) for t in targets))  # misses: through the app, which fills the cache
    assert answered == []
    before = image_counts(port)
    etag = f'If-None-Match: "{instance}.png"'
    cases = [(targets[0],), (targets[0], etag), (targets[1], "Accept-Encoding: identity")]
    shared = bool(app.state.svc.config.database_url)  # PostgreSQL (replicas): every read is the app's
    for n, (target, *extra) in enumerate(cases):
        rid = f"X-Request-ID: req-{n}"
        # a proxy header (uvicorn's ProxyHeadersMiddleware leaves a loopback client as it is) keeps the app's path
        (by_app,) = exchange(port, get(target, rid, "X-Forwarded-Proto: http", *extra))
        assert answered == ([] if shared else [c[0].encode() for c in cases[:n]])
        (by_protocol,) = exchange(port, get(target, rid, *extra))
        assert answered == ([] if shared else [c[0].encode() for c in cases[: n + 1]])
        assert without_date(by_protocol) == without_date(by_app)
        assert by_protocol.startswith(b"HTTP/1.1 304 " if etag in extra else b"HTTP/1.1 200 ")
        assert b"\r\nx-request-id: req-%d\r\n" % n in by_protocol and b"\r\ndate: " in by_protocol
    counts = {k: v - before.get(k, 0) for k, v in image_counts(port).items() if v != before.get(k, 0)}
    assert counts == {"200": 2.0, "304": 2.0}  # the app's and the protocol's
    stop()  # the audit trail is written at shutdown at the latest
    records = {}
    for row in rows(tmp_path / "data"):
        if (row["request_id"] or "").startswith("req-"):
            records.setdefault(row["request_id"], []).append({k: v for k, v in row.items() if k not in ("time", "seq")})
    assert sorted(records) == ["req-0", "req-1", "req-2"]
    assert all(len(pair) == 2 and pair[0] == pair[1] for pair in records.values())
    assert [pair[0]["status"] for pair in records.values()] == [200, 304, 200]


def image_counts(port: int) -> dict[str, float]:
    """GET /image requests counted, by status (the metrics are the process's: compare changes)."""
    prefix = 'dicomsvc_http_requests_total{method="GET",route="/image",status="'
    lines = httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines()
    return {line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)}


def test_the_protocol_keeps_order_and_leaves_the_rest_to_uvicorn(in_process, put):
    """Pipelined requests are answered in order; a request behind one under way, a closing
    connection, HTTP/1.0 and a deleted instance are not the protocol's (uvicorn and the app answer)."""
    port, app, answered, _ = in_process
    instance = httpx.post(f"http://127.0.0.1:{port}/dicom", json={"path": put("CT_small.dcm")}).json()["id"]
    image = f"/image?id={instance}"
    exchange(port, get(image))  # fills the cache
    answered.clear()
    first, second, third = exchange(port, get(image), get("/healthz"), get(image))
    assert [a.split(b"\r\n")[0] for a in (first, second, third)] == [b"HTTP/1.1 200 OK"] * 3
    assert b"image/png" in first and b"image/png" in third and b"image/png" not in second
    shared = bool(app.state.svc.config.database_url)  # PostgreSQL (replicas): every read is the app's
    assert answered == ([] if shared else [image.encode()])  # the third came behind /healthz: through the app
    answered.clear()
    (closing,) = exchange(port, get(image, "Connection: close"))
    assert b"\r\nconnection: close\r\n" in closing.lower() and answered == []
    (old,) = exchange(port, get(image).replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert old.startswith(b"HTTP/1.1 200 ") and answered == []
    assert httpx.delete(f"http://127.0.0.1:{port}/dicom/{instance}").status_code == 204
    (gone,) = exchange(port, get(image))
    assert gone.startswith(b"HTTP/1.1 404 ") and answered == []


def test_the_protocol_answers_only_for_an_app_whose_reads_are_cached():
    config = Config.from_env({"DICOMSVC_DATA_DIR": "/tmp/x"})
    assert uvicorn_config(lambda scope, receive, send: None, config).http.hot is None  # no app state
    assert protocol_class(1, hot=None).hot is None
    off = Config.from_env({"DICOMSVC_DATA_DIR": "/tmp/x", "DICOMSVC_AUTH": "token"})
    from app import create_app

    assert uvicorn_config(create_app(off), off).http.hot is None  # tokens are the stack's to check
    assert uvicorn_config(create_app(config), config).http.hot is not None
    from dicomsvc.http.hotreads import HotReads
    from dicomsvc.http.readcache import ReadCache

    cache, instance = ReadCache(1 << 20), "A" * 22
    cache.put(("png", instance), b"png")
    state = SimpleNamespace(svc=SimpleNamespace(config=config), read_cache=cache)
    written = []
    target = f"/image?id={instance}".encode()
    alone = dataclasses.replace(config, database_url="")  # (the scale run's tests have one)
    assert HotReads(None, alone).answer_now(state, target, [], None, lambda *answer: written.append(answer))
    assert [status for status, _, _ in written] == [200]
    shared = dataclasses.replace(config, database_url="postgresql://db/dicom")
    assert not HotReads(None, shared).answer_now(state, target, [], None, written.append)  # replicas delete too
    assert len(written) == 1
