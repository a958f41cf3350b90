"""Slow clients against a real ``dicomsvc serve`` process (issue 9): a deadline for request
headers (DICOMSVC_HEADER_TIMEOUT) and for idle kept-alive connections (DICOMSVC_KEEPALIVE_TIMEOUT)."""

import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dicomsvc.cli.server import protocol_class, uvicorn_config
from dicomsvc.config import Config

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
