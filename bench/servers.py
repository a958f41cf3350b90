"""The servers under test: starting and stopping dicomsvc and Orthanc as subprocesses.

Everything here talks only to 127.0.0.1 and stops only processes it started
itself (each server runs in a session of its own; its process group is killed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    """A server subprocess in its own session (so we can kill exactly its group)."""

    def __init__(self, name: str, argv: list[str], cwd: str, env: dict, log_path: Path):
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def wait_ready(self, url: str, ok=lambda r: r.status_code == 200, timeout: float = 60.0) -> float:
        """Poll url until ok(response); returns seconds waited. Raises on timeout/death."""
        import httpx

        t0 = time.monotonic()
        deadline = t0 + timeout
        last = None
        with httpx.Client(timeout=2.0, trust_env=False) as c:
            for _ in range(int(timeout / 0.05) + 1):
                if not self.alive():
                    raise RuntimeError(
                        f"{self.name} exited with code {self.proc.returncode} before becoming ready;"
                        f" log tail:\n{self.log_tail()}"
                    )
                try:
                    r = c.get(url)
                    if ok(r):
                        return time.monotonic() - t0
                    last = f"HTTP {r.status_code}: {r.text[:200]!r}"
                except httpx.HTTPError as e:
                    last = repr(e)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s (last: {last}); log tail:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group we created, then SIGKILL after grace. Idempotent."""
        if self.proc is None:
            if self._log:
                self._log.close()
                self._log = None
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        else:
            # leader gone; make sure no straggler of its group survives
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode


def launch(name: str, argv: list[str], cwd: Path, env: dict, log_path: Path, ready_url: str) -> tuple[ServerProc, float]:
    """Start a server and wait (<= 60 s) until ready_url answers 200: the process and its start-up
    seconds.  A server that does not get ready is stopped before the error is raised."""
    server = ServerProc(name, argv, str(cwd), env, log_path)
    server.start()
    try:
        return server, server.wait_ready(ready_url, timeout=60)
    except BaseException:
        server.stop()
        raise


# --------------------------------------------------------------------------
# dicomsvc
# --------------------------------------------------------------------------
def uvicorn_argv(port: int) -> list[str]:
    """dicomsvc as a uvicorn process on 127.0.0.1:port (run from the folder that holds app.py)."""
    return [sys.executable, "-m", "uvicorn", "--factory", "app:create_app", "--host", "127.0.0.1", "--port", str(port)]


def serve_argv() -> list[str]:
    """dicomsvc as ``dicomsvc serve`` runs it (dicomsvc.cli.server.uvicorn_config: no uvicorn access
    log, its header-deadline protocol class, its keep-alive timeout), on DICOMSVC_HOST/PORT
    (``dicomsvc_env(..., DICOMSVC_HOST="127.0.0.1", DICOMSVC_PORT=...)``); run from the repo."""
    return [sys.executable, "-m", "dicomsvc.cli.main", "serve"]  # = .venv/bin/dicomsvc serve


def dicomsvc_env(data: Path, import_root: Path, **settings: str) -> dict:
    """Our environment without any DICOMSVC_* of the caller's, plus the data and import folders,
    log level warning and the given DICOMSVC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMSVC_")}
    env.update(
        DICOMSVC_DATA_DIR=str(data),
        DICOMSVC_IMPORT_ROOT=str(import_root),
        DICOMSVC_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
        **settings,
    )
    return env


# --------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------
def orthanc_binary() -> str | None:
    for cand in ("/usr/sbin/Orthanc", shutil.which("Orthanc")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def orthanc_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        first = out.splitlines()[0].strip() if out else "?"
        return "Orthanc " + first.split()[-1] if first.split() else first
    except (OSError, subprocess.SubprocessError):
        return "?"


def write_orthanc_config(workdir: Path, http_port: int, name: str = "bench") -> Path:
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "HttpCompressionEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),  # unused (server disabled), but never the default 4242
        "DicomModalities": {},
        "OrthancPeers": {},
        "HttpProxy": "",
        "SaveJobs": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "LuaScripts": [],
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


# --------------------------------------------------------------------------
# a service under test
# --------------------------------------------------------------------------
class Service:
    """A server under test: a scratch folder of its own under workroot, a free loopback port,
    and once started its process (``server``) and start-up seconds."""

    label = "?"

    def __init__(self, workroot: Path, tag: str):
        self.work = Path(tempfile.mkdtemp(prefix=f"{self.label}-{tag}-", dir=workroot))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server: ServerProc | None = None
        self.startup_s: float | None = None

    def start(self) -> None:
        self.launch_server()

    def launch_server(self) -> None:
        """Start the server (with launch) and wait until it is ready."""
        raise NotImplementedError

    def launch(self, argv: list[str], cwd: Path, env: dict, ready_path: str) -> None:
        self.server, self.startup_s = launch(self.label, argv, cwd, env, self.work / "server.log", self.base + ready_path)

    def launch_dicomsvc(self, argv: list[str], app_dir: Path, env: dict) -> None:
        self.launch(argv, app_dir, env, "/healthz")

    def stop(self):
        if self.server is not None:
            self.server.stop()


class OrthancService(Service):
    """Orthanc with its own config in ``work`` (loopback only, no DICOM port, no plugins)."""

    label = "orthanc"

    def __init__(self, workroot: Path, tag: str, binary: str):
        super().__init__(workroot, tag)
        self.binary = binary

    def launch_server(self) -> None:
        cfg = write_orthanc_config(self.work, self.port)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
        self.launch([self.binary, str(cfg)], self.work, env, "/system")


class NetworkedDicomsvc(Service):
    """dicomsvc (uvicorn, its worker processes) with a DICOMSVC_NETWORK_CONFIG of ``network``
    (destinations, rules) and more DICOMSVC_* ``settings``; run from ``app_dir`` (the repo).
    ``Session.start(it, record, app_dir, import_root, network, settings)``."""

    label = "dicomsvc"

    def start(self, app_dir: Path, import_root: Path, network: dict, settings: dict[str, str]) -> None:
        data = self.work / "data"
        data.mkdir()
        path = self.work / "network.json"
        path.write_text(json.dumps(network))
        env = dicomsvc_env(data, import_root, DICOMSVC_NETWORK_CONFIG=str(path), DICOMSVC_HOST="127.0.0.1",
                           DICOMSVC_PORT=str(self.port), **settings)  # fmt: skip
        self.launch_dicomsvc(serve_argv(), app_dir, env)


class OrthancPacs(OrthancService):
    """Orthanc as a PACS: its DICOM server (AE ORTHANC, any calling AE may store) and the DICOMweb
    plugin (Debian's orthanc-dicomweb) at /dicom-web/; ports chosen at once (``dimse_port``).
    ``extra``: more of Orthanc's configuration (DicomModalities, DicomWeb servers to send to)."""

    DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

    def __init__(self, workroot: Path, tag: str, binary: str, extra: dict | None = None):
        super().__init__(workroot, tag, binary)
        self.dimse_port = free_port()
        self.extra = extra or {}

    def launch_server(self) -> None:
        cfg_path = write_orthanc_config(self.work, self.port)
        cfg = json.loads(cfg_path.read_text())
        cfg |= {"DicomServerEnabled": True, "DicomPort": self.dimse_port, "DicomAet": "ORTHANC",
                "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                "Plugins": [str(self.DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}  # fmt: skip
        for key, value in self.extra.items():
            cfg[key] = cfg[key] | value if isinstance(cfg.get(key), dict) else value
        cfg_path.write_text(json.dumps(cfg, indent=2))
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
        self.launch([self.binary, str(cfg_path)], self.work, env, "/system")


class Session:
    """One benchmark run: its scratch folder (tmp) and the servers it started (live).

    ``with Session(prefix, keep) as run:`` stops every server still in run.live at
    the end, whatever happens, and removes tmp unless keep; Ctrl-C inside the
    block ends it with run.rc = 130.
    """

    def __init__(self, prefix: str, keep: bool):
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep = keep
        self.live: list[Service] = []
        self.rc = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if interrupted:
            print("interrupted", file=sys.stderr)
            self.rc = 130
        for t in list(self.live):
            try:
                t.stop()
            except Exception as e:  # noqa: BLE001
                print(f"stopping {t.label} failed: {e}", file=sys.stderr)
        if self.keep:
            print(f"kept: {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return interrupted

    def start(self, t: Service, record: dict, *args) -> bool:
        """t.start(*args), t counted in live; its start-up seconds, or the failure, go into record
        (the service's results)."""
        self.live.append(t)
        try:
            t.start(*args)
            record.setdefault("startup_s", round(t.startup_s, 2))
            return True
        except Exception as e:  # noqa: BLE001
            record.setdefault("fatal", []).append(f"start failed: {e}")
            print(f"[{t.label}] start failed: {e}", file=sys.stderr)
            return False

    def stop(self, t: Service) -> None:
        t.stop()
        self.live.remove(t)
