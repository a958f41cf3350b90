"""The worker process's side of ``dicomsvc.workers``: its start (limits, set-up), its loop
(a task in, a reply out) and the shape of its replies.

Apart from the pool (server side), so that the fork server, and every worker forked from
it, imports only what runs there: the pool's event loop code (asyncio) and the server's
metrics (prometheus_client) are not loaded into processes that never use them (issue 12:
memory, each such module counted in every worker's RSS).
"""

import contextlib
import ctypes
import gc
import importlib
import os
import pickle
import resource
import signal
import sys
import traceback
from dataclasses import dataclass

from . import heap
from .errors import DicomSvcError
from .storage import blobs

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP = b"stop"  # the message that ends a worker (tasks are pickles, never this)
# A worker idle this long after a task hands the heap memory its tasks freed back to the
# system (heap.trim): not after every task, where the next one would fault it in again
IDLE_TRIM_S = 1.0
# Libraries that start a thread per CPU at import, each reserving address space
# (OpenBLAS: ~40 MB a thread): one is plenty for a worker, and keeps RLIMIT_AS honest
ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Limits:
    memory: int = 0  # bytes of address space per worker (RLIMIT_AS); 0: none
    timeout: float = 0  # seconds per task; 0: none


@dataclass(frozen=True)
class Setup:
    """What a worker runs once before its first task: ``module:function`` and its
    arguments, run after the limits are in place; and the modules the fork server
    imports for all the workers to share (``preload``; the initializer's module too).
    The fork server is one per server process, started by the first pool with the
    preload list of that pool."""

    initializer: str = ""
    args: tuple = ()
    preload: tuple[str, ...] = ()


def _worker_main(conn, server_pid: int, limits: Limits, setup: Setup) -> None:
    """A worker's life: die with the parent, take the limits, set up, then serve tasks."""
    die_with_parent()
    if not _parent_is_ours(server_pid):  # the parent went before the request took effect
        os._exit(0)
    ignore_stop_signals()
    for name in ONE_THREAD:
        os.environ.setdefault(name, "1")
    if limits.memory:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    heap.hold()  # as the server's: an ingest's buffers stay on the heap for the next (dicomsvc.heap)
    if setup.initializer:
        module, _, function = setup.initializer.partition(":")
        getattr(importlib.import_module(module), function)(*setup.args)
    gc.freeze()  # what the fork server imported stays shared: no collection writes to it
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    _serve(conn)


def ignore_stop_signals() -> None:
    """Ctrl-C (SIGINT to the terminal's process group) and SIGTERM to the whole group
    (``kill -TERM -<pgid>``, systemd's KillMode=control-group) are the server's to handle: it
    lets the running tasks finish, then stops each worker (``STOP``: it removes its note of
    placed blobs, ``storage.blobs``). A worker killed by the signal itself would fail its task
    and leave its note behind. The server dying all the same kills them (``die_with_parent``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def die_with_parent() -> None:
    """Ask for SIGKILL when the parent process goes (Linux: ``PR_SET_PDEATHSIG``)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _parent_is_ours(server_pid: int) -> bool:
    """This process's parent is the server, or the server's child (the fork server)."""
    parent = os.getppid()
    return parent == server_pid or _parent_of(parent) == server_pid


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])  # after (comm): state, ppid
    except (OSError, ValueError, IndexError):
        return None


def _serve(conn) -> None:
    trimmed = True
    while True:
        if not trimmed and not conn.poll(IDLE_TRIM_S):
            heap.trim()
            trimmed = True
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the server is gone
            os._exit(0)
        if data == STOP:
            blobs.drop_notes()
            return
        reply, retire = _run_task(data)
        trimmed = False
        try:
            payload = pickle.dumps(reply)
        except Exception:  # an exception that does not pickle: its name and message
            error = reply[1]
            payload = pickle.dumps(("error", RuntimeError(f"{type(error).__name__}: {error}"), reply[2]))
        try:
            conn.send_bytes(payload)
        except OSError:
            os._exit(0)
        if retire:
            blobs.drop_notes()
            return


def failure(exc: BaseException) -> tuple:
    """The reply of a task (or of one item of a grouped task) that raised ``exc``: the
    service's own errors as they are, anything else with its traceback (the server raises
    it with a ``RemoteTraceback`` cause), as a RuntimeError naming it if it does not pickle."""
    if isinstance(exc, DicomSvcError):
        return ("error", exc, None)
    remote = "".join(traceback.format_exception(exc))
    try:
        pickle.dumps(exc)
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return ("error", exc, remote)


def _run_task(data: bytes) -> tuple[tuple, bool]:
    """The reply to one task, and whether this worker should leave after sending it."""
    try:
        fn, args, tag = pickle.loads(data)
        blobs.begin_task(tag)
        return ("ok", fn(*args)), False
    except MemoryError:  # past RLIMIT_AS: answered 413, and a fresh worker takes over
        return ("memory", None), True
    except BaseException as exc:  # refused input; a bug, or a decoder's panic (a BaseException)
        return failure(exc), False
    finally:
        with contextlib.suppress(OSError):
            blobs.end_task()
