"""dicomsvc as it runs for a browser: ``uvicorn --factory app:create_app`` in a subprocess on a
loopback port, and the browser that drives it, for test_ohif.py and test_webpage.py."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_env(**settings: str) -> dict[str, str]:
    """This process's environment without its DICOMSVC_* variables, plus ``settings``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DICOMSVC_")} | settings


@contextlib.contextmanager
def running(port: int, env: dict[str, str], log_path: Path, serve: bool = False) -> Iterator[str]:
    """The service on 127.0.0.1:``port`` with ``env``, its output in ``log_path``; yields its
    origin once /healthz answers (60 s at most), and stops it (SIGTERM, then SIGKILL) after.
    Run by uvicorn's command line, or with ``serve`` as ``dicomsvc serve`` runs it."""
    with serving(port, env, log_path, serve) as (origin, _):
        yield origin


@contextlib.contextmanager
def serving(port: int, env: dict[str, str], log_path: Path, serve: bool = False) -> Iterator[tuple[str, subprocess.Popen]]:
    """``running``'s service, yielding its origin and its server process."""
    origin = f"http://127.0.0.1:{port}"
    if serve:
        argv = [sys.executable, "-m", "dicomsvc.cli.main", "serve"]
        env = env | {"DICOMSVC_HOST": "127.0.0.1", "DICOMSVC_PORT": str(port)}
    else:
        argv = [sys.executable, "-m", "uvicorn", "--factory", "app:create_app", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"dicomsvc exited: {log_path.read_text()[-2000:]}"
                try:
                    if httpx.get(origin + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "dicomsvc did not start in 60 s"
                time.sleep(0.1)
            yield origin, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


# --------------------------------------------------------------------------
# the browser: Debian's Chromium driven by playwright-core from node (tests/ohif/setup.sh)
# --------------------------------------------------------------------------
BROWSERS = ("/usr/lib/chromium/chromium-headless-shell", "/usr/lib/chromium/chromium")
PLAYWRIGHT = REPO / "tests" / "ohif" / "node_modules" / "playwright-core" / "package.json"


def find_browser() -> str | None:
    """Debian's chromium-headless-shell (or chromium): the binary itself, not /usr/bin's wrapper
    script (which does not exec, so stopping it could leave the browser behind)."""
    chosen = os.environ.get("OHIF_TEST_CHROMIUM")
    for candidate in ([chosen] if chosen else BROWSERS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_or_skip(what: str, more_missing: list[str] = ()) -> str:
    """The browser's path; else ``what`` is skipped saying what is missing -- or, under CI=true,
    fails (CI installs everything: a skip there would hide a broken set-up)."""
    reasons = []
    if find_browser() is None:
        reasons.append("no Chromium (apt-get install chromium-headless-shell)")
    if shutil.which("node") is None:
        reasons.append("no node")
    if not PLAYWRIGHT.is_file():
        reasons.append("no playwright-core in tests/ohif/node_modules")
    reasons += more_missing
    if reasons:
        message = f"{what} needs tests/ohif/setup.sh: " + "; ".join(reasons)
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message + " (CI=true: not skipping)")
        pytest.skip(message)
    return find_browser()
