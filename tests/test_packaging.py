"""The wheel: ``pip install .`` (not editable), then ``dicomsvc serve`` from any directory.

Builds the wheel from this checkout, installs it alone (``--no-deps``) into a fresh
virtual environment whose dependencies come from the test environment's
site-packages (appended to ``sys.path`` by a ``.pth`` line, so this checkout and its
editable install are not visible), and starts the service from an empty directory.
Also: start-up failures exit at once, with the reason.
"""

import os
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from dicomfiles import sample_file

pytestmark = pytest.mark.same_in_scale_run("the wheel's server runs in a subprocess with its own environment (SQLite, local blobs)")

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed in it; its ``bin`` folder."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = (work / "dist").glob("dicomsvc-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    # the dependencies: a plain path line (not a site dir, so the editable install's .pth is not run)
    (Path(purelib) / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def env_for(data: Path, port: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMSVC_") and k != "PYTHONPATH"}
    return env | {"DICOMSVC_DATA_DIR": str(data), "DICOMSVC_PORT": str(port), "DICOMSVC_HOST": "127.0.0.1"} | extra


def test_the_wheel_installs_and_serves_from_any_directory(installed, tmp_path):
    where = subprocess.run(
        [str(installed / "python"), "-c", "import dicomsvc, app; print(dicomsvc.__file__); print(app.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert str(REPO) not in where and "site-packages" in where  # the installed copy, not this checkout
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(installed / "dicomsvc"), "serve"], cwd=tmp_path, env=env_for(tmp_path / "data", port),
            stdout=out, stderr=out,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the installed service did not start"
            time.sleep(0.2)
        body = sample_file("CT_small.dcm").read_bytes()
        stored = httpx.post(f"{url}/dicom", content=body, headers={"content-type": "application/dicom"})
        assert stored.status_code == 201, stored.text
        image = httpx.get(f"{url}/image", params={"id": stored.json()["id"]})
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        assert httpx.get(f"{url}/tags", params={"id": stored.json()["id"]}).json()["tags"]
        page = httpx.get(f"{url}/")  # the page and its assets are package data (dicomsvc/http/static/)
        assert page.status_code == 200 and "/ui/app.js?v=" in page.text
        assert httpx.get(f"{url}/ui/app.js").text.startswith("// dicomsvc's page")
    finally:
        server.terminate()
        server.wait(timeout=30)


def start_failing(installed: Path, cwd: Path, env: dict) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [str(installed / "dicomsvc"), "serve"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stderr, time.monotonic() - started


def test_a_failed_start_exits_at_once_with_the_reason(installed, tmp_path):
    code, err, seconds = start_failing(installed, tmp_path, env_for(tmp_path / "d", 1, DICOMSVC_PORT="eighty"))
    assert code != 0 and "DICOMSVC_PORT must be an integer" in err and seconds < 20
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    code, err, seconds = start_failing(installed, tmp_path, env_for(blocked / "data", free_port()))
    assert code != 0 and "cannot create the data directory" in err and seconds < 20


def test_a_second_server_on_the_same_data_directory_refuses_to_start(installed, tmp_path):
    data = tmp_path / "data"
    first = subprocess.Popen(
        [str(installed / "dicomsvc"), "serve"], cwd=tmp_path, env=env_for(data, free_port()),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (data / "dicom.db").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        marker = data / "blobs" / ".tmp" / "in-flight.dcm"  # what the first one is writing
        marker.write_bytes(b"x")
        code, err, seconds = start_failing(installed, tmp_path, env_for(data, free_port()))
        assert code != 0 and "already using the data directory" in err and seconds < 20
        assert marker.exists()  # the second one touched nothing
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_a_bad_network_config_stops_the_start_with_its_reason(installed, tmp_path):
    """DICOMSVC_NETWORK_CONFIG (README "DICOM networking"): missing, not JSON, or a wrong entry."""
    env = env_for(tmp_path / "d", free_port(), DICOMSVC_DIMSE_PORT=str(free_port()))
    missing = tmp_path / "nowhere.json"
    code, err, seconds = start_failing(installed, tmp_path, env | {"DICOMSVC_NETWORK_CONFIG": str(missing)})
    assert code != 0 and f"DICOMSVC_NETWORK_CONFIG: the file {missing} does not exist" in err and seconds < 20
    broken = tmp_path / "broken.json"
    broken.write_text('{"peers": [')
    code, err, _ = start_failing(installed, tmp_path, env | {"DICOMSVC_NETWORK_CONFIG": str(broken)})
    assert code != 0 and f"DICOMSVC_NETWORK_CONFIG: {broken} is not JSON (line 1" in err
    broken.write_text('{"peers": [{"ae_title": "A_TITLE_OF_17_CHR"}]}')
    code, err, _ = start_failing(installed, tmp_path, env | {"DICOMSVC_NETWORK_CONFIG": str(broken)})
    assert code != 0 and "peers[0].ae_title must be an AE title" in err
    code, err, _ = start_failing(installed, tmp_path, env | {"DICOMSVC_AE_TITLE": "BACK\\SLASH"})
    assert code != 0 and "DICOMSVC_AE_TITLE must be an AE title" in err
