"""Readiness (``GET /readyz``): whether the service can do its work now, not merely run.

Three checks, each cheap enough for a probe every few seconds:

- the database takes writes: one small committed write (``storage.sqlite.probe_write``);
  a read-only file or mount, a locked or broken database fail it;
- free space in the data directory is at least ``DICOMSVC_MIN_FREE_BYTES`` (statvfs);
- a worker process is alive (``/proc``: a zombie is not). When none is, a trivial task is
  handed to the pool, which replaces dead workers as it takes them, so the service heals
  and the next probe finds it ready; this one answers 503.

``/healthz`` stays a liveness check (the process answers): a load balancer takes a
not-ready service out of rotation, an orchestrator restarts only a dead one.
"""

import asyncio
import os
import shutil
from pathlib import Path

from .storage.sqlite import probe_write

_probes: dict[int, asyncio.Task] = {}  # a running replacement probe per service


def free_bytes(path: Path) -> int:
    """Bytes free for an unprivileged writer in the file system holding ``path``."""
    return shutil.disk_usage(path).free


def worker_pids(pool) -> list[int] | None:
    """The pool's worker processes; None for a pool of threads (DICOMSVC_WORKERS=0)."""
    pids = getattr(pool, "pids", None)
    if callable(pids):
        found = pids()
        return found or None
    processes = getattr(pool, "_processes", None)  # concurrent.futures.ProcessPoolExecutor
    return list(processes) if isinstance(processes, dict) else None


def alive(pid: int) -> bool:
    """A process that runs: exists and is not a zombie (exited, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X", b"x")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


async def readiness(svc, when: str) -> tuple[bool, dict]:
    """(ready, the checks) -- ``when`` is written by the database probe."""
    checks: dict = {}
    try:
        await probe_write(svc.db, when)
        checks["database"] = {"ok": True}
    except Exception as exc:  # the type only: messages can name files
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    data_dir = svc.config.data_dir
    try:
        free = await svc.io(free_bytes, data_dir)
        checks["disk"] = {"ok": free >= svc.config.min_free_bytes, "free_bytes": free,
                          "min_free_bytes": svc.config.min_free_bytes}  # fmt: skip
    except OSError as exc:
        checks["disk"] = {"ok": False, "error": type(exc).__name__}
    checks["workers"] = _workers(svc)
    if svc.blobs.remote is not None:  # DICOMSVC_BLOB_URL: one LIST of at most one object
        try:
            await svc.io(svc.blobs.remote.check)
            checks["object_store"] = {"ok": True}
        except Exception as exc:  # the type only
            checks["object_store"] = {"ok": False, "error": type(getattr(exc, "__cause__", None) or exc).__name__}
    return all(check["ok"] for check in checks.values()), checks


def _workers(svc) -> dict:
    pids = worker_pids(svc.cpu_pool)
    if pids is None:
        return {"ok": True, "alive": "threads"}
    living = sum(alive(pid) for pid in pids)
    if living == 0:
        _replace_dead_workers(svc)
    return {"ok": living > 0, "alive": living}


def _replace_dead_workers(svc) -> None:
    """Hand the pool a trivial task: it replaces the dead workers it takes (at most one
    such task at a time)."""
    running = _probes.get(id(svc))
    if running is not None and not running.done():
        return

    async def probe() -> None:
        try:
            await svc.cpu(os.getpid)
        except Exception:
            pass

    task = asyncio.get_running_loop().create_task(probe(), name="dicomsvc-worker-probe")
    _probes[id(svc)] = task
    task.add_done_callback(lambda t: _probes.pop(id(svc), None) if _probes.get(id(svc)) is t else None)
