"""Worker processes for CPU work: one task at a time on a known worker, under limits.

Not ``concurrent.futures.ProcessPoolExecutor``: there a running task cannot be
stopped (only the whole pool can be broken), and when one worker dies every
task in flight fails with it. Here each worker is a process with its own pipe,
and the server hands it one task at a time, so a death or a timeout belongs to
exactly one task.

Workers are forked from a fork server (multiprocessing's "forkserver" start
method; ``dicomsvc.forkserver`` is its first import, ``dicomsvc.workerproc`` -- the
worker's side of this module: its loop, limits and replies, without the pool's asyncio
and metrics -- its second): it imports what the workers
run once (``Setup.preload``: numpy, pydicom and its decoders, the pipeline), and
every worker forked from it shares those pages copy-on-write, where spawned
workers each imported their own (issue 12: idle memory counted as PSS). Each
worker freezes what it inherited (``gc.freeze``), so its garbage collector does not
write to, and so copy, those pages. The limits are taken in the worker, after the
fork:

* memory: each worker's address space is capped (``RLIMIT_AS``,
  DICOMSVC_WORKER_MEMORY). An allocation past it fails; a ``MemoryError`` that
  escapes the task is answered 413 ``too_large`` and the worker is replaced.
* time: a task running longer than DICOMSVC_WORKER_TIMEOUT has its worker
  killed (SIGKILL) and replaced; it is answered 503 ``busy``.
* a worker that dies otherwise (a decoder's segfault or abort) fails its task
  alone: 422 ``invalid_dicom``; one killed by someone else (the kernel's OOM
  killer) 413.
* workers die with the server, kill -9 included: the fork server asks the
  kernel for SIGKILL when the server goes, and each worker for SIGKILL when the
  fork server goes (``PR_SET_PDEATHSIG``); an idle worker also leaves when its
  pipe reaches end of file.

``PR_SET_PDEATHSIG`` fires when the *thread* that started the process exits, not
the process: the fork server is only ever started from one thread that lives as
long as the server process (``_start_fork_server``); the workers' parent, the fork
server, has one thread.

When a task's worker dies or is killed, ``on_lost(tag)`` runs before the task is
answered, so the service can remove what the task had written (``dicomsvc.storage.blobs``
names a task's files after its tag).

Grouped tasks (``run_grouped``, issue 12: "hand off less", "commits grouped across
concurrent ingests"): calls of one function that wait for a worker together go to the
first worker free as one task of all their items (up to ``GROUP_CAP``), ``fn(*shared,
items)``, which answers each item with a reply of its own (``failure``: one item's
error is that item's). A call that finds a worker idle goes at once, alone: a group
never waits to fill. Its time limit is DICOMSVC_WORKER_TIMEOUT per item; a worker that
dies, times out or runs out of memory mid-group fails every item of the group, each
with the answer it would have had alone.
"""

import asyncio
import contextlib
import functools
import importlib
import logging
import multiprocessing
import os
import pickle
import secrets
import signal
import struct
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import metrics
from .errors import Busy, DicomSvcError, InvalidDicom, WorkerMemory
from .storage import blobs
from .workerproc import STOP, Limits, Setup, _worker_main  # the worker's side (Limits, Setup: the pool's too)

log = logging.getLogger("dicomsvc")

START_TIMEOUT = 120.0  # seconds a new worker may take to import what it needs
STOP_TIMEOUT = 10.0  # seconds a worker may take to leave at shutdown before it is killed
# A task up to this size is written to an idle worker from the event loop (its socket takes it
# at once: Linux gives a Unix socket ~200 KiB of buffer); a larger one from a thread
INLINE_SEND = 64 * 1024
READ_SIZE = 1 << 20  # bytes read at most per readiness of a worker's connection
_LENGTH, _LONG_LENGTH = struct.Struct("!i"), struct.Struct("!Q")  # multiprocessing.connection's framing
FORK_SERVER = "dicomsvc.forkserver"  # the fork server's first import (see there)
WORKER_SIDE = "dicomsvc.workerproc"  # its second: what a worker runs (not this module: no asyncio there)
FORK_SERVER_READY = "dicomsvc.forkserver_ready"  # its last: all loaded, what only loading used is let go
GROUP_CAP = 8  # items at most in one grouped task (run_grouped)


class RemoteTraceback(Exception):
    """The traceback of an unexpected error in a worker, as its ``__cause__``."""

    def __str__(self) -> str:
        return self.args[0]


# The server side ---------------------------------------------------------------------------

# The one thread that starts (and restarts) the fork server: it lives as long as the
# server process, so the fork server's PR_SET_PDEATHSIG fires only when the server goes
_STARTER = ThreadPoolExecutor(1, thread_name_prefix="dicomsvc-forkserver")


def _start_fork_server(preload: tuple[str, ...]) -> None:
    """Have the fork server running (started from ``_STARTER``), preloading ``preload``
    after ``dicomsvc.forkserver``. Without one (not a POSIX system), workers are spawned."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(list(dict.fromkeys((FORK_SERVER, WORKER_SIDE, *preload, FORK_SERVER_READY))))
    _no_resource_tracker()
    _STARTER.submit(forkserver.ensure_running).result()


def _no_resource_tracker() -> None:
    """No resource tracker process for the fork server (a whole interpreter: ~8 MiB PSS, a
    twelfth of the idle target). multiprocessing starts one so that named semaphores and
    shared memory leaked by a crashed process get unlinked; the pool uses neither (a pipe per
    worker, nothing else), so the tracker it would talk to is /dev/null: multiprocessing
    finds it "running" (its probe, a write, succeeds) and never starts the real one. Skipped
    when multiprocessing's internals are not the ones this was written against (3.11-3.12)
    or a tracker is running already."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is None or getattr(tracker, "_fd", 0) is not None or not hasattr(tracker, "_check_alive"):
        return
    tracker._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


@dataclass
class _Group:
    """Items of ``run_grouped`` calls of one function waiting for a worker, each with the
    future its caller awaits."""

    fn: Callable[..., list]
    shared: tuple
    items: list[tuple[Any, asyncio.Future]]


class _Worker:
    def __init__(self, process: multiprocessing.process.BaseProcess, conn) -> None:
        self.process = process
        self.conn = conn
        self.ready = False
        self.retire = False  # replace it after this task
        self.killed = False  # by us (time limit)
        self.name = f"w{secrets.token_hex(6)}"  # begins its tasks' tags: names its note (storage.blobs)

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(STOP_TIMEOUT)


class WorkerPool:
    """``size`` worker processes; ``await run(fn, *args)`` runs ``fn(*args)`` in one of them.

    Arguments and results are pickled. A task handed to a worker finishes (or hits a
    limit) even if its caller is cancelled; one still waiting for a worker does not start.
    """

    def __init__(
        self,
        size: int,
        limits: Limits,
        setup: Setup = Setup(),
        on_lost: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.size = max(size, 1)
        self.limits = limits
        self.setup = setup
        self.on_lost = on_lost
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self._context = multiprocessing.get_context(method)
        module = setup.initializer.partition(":")[0]
        self._preload = tuple(setup.preload) + ((module,) if module else ())
        # Last in, first out: under light load one worker takes task after task, its caches warm
        # (SQLite's page cache stays valid while no other connection writes; CPU caches, heap).
        # Handed out in turn, two workers each found the database changed by the other at every
        # task and read its pages again: 14.2 -> 12.7 ms of CPU per instance, one client, by path
        self._idle: asyncio.Queue[_Worker] = asyncio.LifoQueue()
        self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="dicomsvc-worker")
        self._running: set[asyncio.Task] = set()
        self._workers: set[_Worker] = set()  # idle and busy
        self._groups: dict[tuple, _Group] = {}  # by function: the group still waiting for a worker
        self._closed = False

    async def start(self) -> None:
        """Start the workers and wait until each is ready; a worker that cannot start
        (too small a DICOMSVC_WORKER_MEMORY, say) is an error."""
        workers = [self._spawn() for _ in range(self.size)]
        loop = asyncio.get_running_loop()
        started = await asyncio.gather(
            *(loop.run_in_executor(self._threads, self._wait_ready, w) for w in workers), return_exceptions=True
        )
        failed = [w for w, ok in zip(workers, started) if ok is not True]
        if failed:
            for worker in workers:
                await loop.run_in_executor(self._threads, worker.kill)
            self._threads.shutdown()
            code = failed[0].process.exitcode
            raise RuntimeError(f"a worker process could not start (exit code {code}); is DICOMSVC_WORKER_MEMORY too small?")
        for worker in workers:
            self._idle.put_nowait(worker)

    def pids(self) -> list[int]:
        """The process ids of the workers, idle or busy (for tests and diagnostics)."""
        return [w.process.pid for w in self._workers]

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        worker = await self._take()  # cancellable: the task has not started
        task = self._start(self._run_on(worker, fn, args))
        return self._outcome(await asyncio.shield(task))

    async def run_grouped(self, fn: Callable[..., list], item: Any, *shared: Any) -> Any:
        """``fn(*shared, [item])[0]``'s outcome, ``item`` grouped with the items of the other
        calls of ``fn`` (with the same ``shared`` arguments) waiting for a worker: the first
        worker free runs ``fn(*shared, items)`` once, which returns a reply per item
        (``("ok", value)`` or ``failure(exc)``). A call cancelled before its group starts
        leaves it."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        future = asyncio.get_running_loop().create_future()
        key = (fn, *map(id, shared))
        group = self._groups.get(key)
        if group is None or len(group.items) >= GROUP_CAP:
            group = self._groups[key] = _Group(fn, shared, [])
            self._start(self._run_group(key, group))
        group.items.append((item, future))
        return self._outcome(await future)  # its cancellation cancels the future: left out of the group

    async def run_alone(self, fn: Callable[..., list], item: Any, *shared: Any) -> Any:
        """``run_grouped``'s outcome for an item never grouped: ``fn(*shared, [item])``, a task
        of its own (a lost worker fails it alone, as ``run``)."""
        (reply,) = await self.run(fn, *shared, [item])
        return self._outcome(reply)

    async def _run_group(self, key: tuple, group: _Group) -> None:
        try:
            try:
                worker = await self._take()
            finally:
                if self._groups.get(key) is group:  # closed: later calls start another
                    del self._groups[key]
            waiting = [(item, future) for item, future in group.items if not future.done()]
            if not waiting:  # every caller went away while waiting
                self._idle.put_nowait(worker)
                return
            metrics.worker_group(len(waiting))
            items = [item for item, _ in waiting]
            reply = await self._run_on(worker, group.fn, (*group.shared, items), len(items))
            if reply[0] == "ok":
                for (_, future), each in zip(waiting, reply[1], strict=True):
                    if not future.done():
                        future.set_result(each)
            elif len(waiting) == 1:
                if not waiting[0][1].done():
                    waiting[0][1].set_result(reply)
            else:
                # the task as a whole failed (its worker lost, out of time or memory): one item
                # brought it down, so each goes again alone and only that one gets the answer
                # (grouped items can be run again: Service.ingest_one groups paths only)
                for item, future in waiting:
                    if future.done():
                        continue
                    alone = await self._run_on(await self._take(), group.fn, (*group.shared, [item]))
                    if not future.done():
                        future.set_result(alone[1][0] if alone[0] == "ok" else alone)
        except BaseException as exc:  # no caller left waiting for ever
            for _, future in group.items:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _take(self) -> "_Worker":
        """An idle worker (waiting for one), alive."""
        worker = await self._idle.get()
        while not worker.process.is_alive():  # killed from outside while idle: not this task's doing
            worker = self._replace(worker)
        return worker

    def _start(self, work: Awaitable[Any]) -> asyncio.Task:
        """Run ``work`` as a task that close() waits for."""
        task = asyncio.create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def close(self) -> None:
        """Let running tasks finish, then stop every worker."""
        self._closed = True
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        loop = asyncio.get_running_loop()
        workers = []
        while not self._idle.empty():
            workers.append(self._idle.get_nowait())
        await asyncio.gather(*(loop.run_in_executor(self._threads, self._stop, w) for w in workers))
        self._threads.shutdown(wait=True)

    # internals

    def fork_server_pid(self) -> int | None:
        """The fork server's process id (for tests and diagnostics); None when spawning."""
        if self._context.get_start_method() != "forkserver":
            return None
        from multiprocessing import forkserver

        return forkserver._forkserver._forkserver_pid

    def _spawn(self) -> _Worker:
        if self._context.get_start_method() == "forkserver":
            _start_fork_server(self._preload)  # else Process.start would, from this thread
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(theirs, os.getpid(), self.limits, self.setup),
            name="dicomsvc-worker",
            daemon=True,
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self._workers.add(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        """Stop ``worker`` for good and start another (in the loop thread)."""
        self._workers.discard(worker)
        if worker.process.is_alive():
            worker.process.kill()
        with contextlib.suppress(OSError):
            worker.conn.close()
        log.warning("a worker process stopped (%s); starting another", _why(worker))
        metrics.worker_restart("timeout" if worker.killed else "memory" if worker.retire else "crash")
        if worker.process.exitcode is not None:
            worker.process.close()
        return self._spawn()

    def _wait_ready(self, worker: _Worker) -> bool:
        """Block until the worker says it is ready (in a thread); False if it died first."""
        if worker.ready:
            return True
        try:
            if not worker.conn.poll(START_TIMEOUT):
                worker.kill()
                return False
            kind, _ = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            worker.process.join(STOP_TIMEOUT)
            return False
        worker.ready = kind == "ready"
        return worker.ready

    def _stop(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.conn.send_bytes(STOP)
        worker.process.join(STOP_TIMEOUT)
        if worker.process.is_alive():
            worker.kill()
        worker.conn.close()
        self._workers.discard(worker)

    async def _run_on(self, worker: _Worker, fn: Callable[..., Any], args: tuple, items: int = 1) -> tuple:
        """The worker's reply to ``fn(*args)`` (its time limit: ``items`` times the limit), once
        what the task wrote is removed if the worker died."""
        tag = f"{worker.name}.t{secrets.token_hex(8)}"
        loop = asyncio.get_running_loop()
        try:
            reply = await self._exchange_here(worker, (fn, args, tag), loop, items)
        finally:
            self._give_back(worker)
        if reply[0] not in ("ok", "error", "memory") and self.on_lost is not None:  # the worker died mid-task
            try:
                await self.on_lost(tag)
            except Exception:
                log.exception("could not remove what a task left when its worker died")
        return reply

    def _outcome(self, reply: tuple) -> Any:
        """A reply's value, or its error raised."""
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind == "error":
            exc, remote = reply[1], reply[2]
            if remote:
                exc.__cause__ = RemoteTraceback(remote)
            raise exc
        raise _lost(kind, reply[1], self.limits)

    async def _exchange_here(self, worker: _Worker, task: tuple, loop: asyncio.AbstractEventLoop, items: int = 1) -> tuple:
        """``_exchange`` without a thread once the worker is ready: the task written from the
        event loop (the idle worker is reading, so its socket takes up to INLINE_SEND bytes at
        once; more go from a thread) and the reply read as it arrives (``_receive``). Issue 12:
        a hop to a thread and back costs the server ~120 us of CPU."""
        timeout = self.limits.timeout * items
        if not worker.ready:  # a fresh worker: waited for in a thread, as before
            return await loop.run_in_executor(self._threads, self._exchange, worker, task, timeout)
        payload = pickle.dumps(task)  # an argument that does not pickle fails here, in the caller
        try:
            if len(payload) <= INLINE_SEND:
                worker.conn.send_bytes(payload)
            else:
                await loop.run_in_executor(self._threads, worker.conn.send_bytes, payload)
            data = await _receive(worker.conn.fileno(), timeout, loop)
        except (EOFError, OSError):
            await loop.run_in_executor(self._threads, worker.process.join, STOP_TIMEOUT)
            return ("killed" if worker.process.exitcode == -signal.SIGKILL else "died", worker.process.exitcode)
        if data is None:
            await loop.run_in_executor(self._threads, worker.kill)
            metrics.worker_timeout()
            return ("timeout", None)
        reply = pickle.loads(data)
        if reply[0] == "memory":
            worker.retire = True
            await loop.run_in_executor(self._threads, worker.process.join, STOP_TIMEOUT)  # it leaves by itself
        return reply

    def _exchange(self, worker: _Worker, task: tuple, timeout: float) -> tuple:
        """Hand ``task`` to the worker and wait for its reply (in a thread)."""
        payload = pickle.dumps(task)  # an argument that does not pickle fails here, in the caller
        if not self._wait_ready(worker):
            return ("died", worker.process.exitcode)
        try:
            worker.conn.send_bytes(payload)
            if not worker.conn.poll(timeout or None):
                worker.kill()
                metrics.worker_timeout()
                return ("timeout", None)
            reply = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            worker.process.join(STOP_TIMEOUT)
            return ("killed" if worker.process.exitcode == -signal.SIGKILL else "died", worker.process.exitcode)
        if reply[0] == "memory":
            worker.retire = True
            worker.process.join(STOP_TIMEOUT)  # it leaves by itself after answering
        return reply

    def _give_back(self, worker: _Worker) -> None:
        """Back to the idle queue, or a fresh worker in its place (in the loop thread)."""
        if not worker.retire and not worker.killed and worker.process.is_alive():
            self._idle.put_nowait(worker)
        elif self._closed:
            self._workers.discard(worker)
            worker.process.kill()
        else:
            self._idle.put_nowait(self._replace(worker))


async def _receive(fd: int, timeout: float, loop: asyncio.AbstractEventLoop) -> memoryview | None:
    """The next message on a worker's connection, read in the event loop as its bytes arrive
    (``add_reader``: one ``os.read`` per readiness, never a blocking one), in the framing of
    ``multiprocessing.connection`` (``Connection.send_bytes``: a signed 4-byte big-endian
    length, or -1 and an 8-byte length, then the bytes). None once ``timeout`` seconds (0:
    none) have passed; EOFError (or the read's OSError) when the worker is gone first."""
    message = bytearray()
    done: asyncio.Future = loop.create_future()

    def readable() -> None:
        try:
            chunk = os.read(fd, min(_missing(message), READ_SIZE))
        except OSError as exc:
            chunk, error = b"", exc
        else:
            error = EOFError("the worker closed its connection")
        if not chunk:
            if not done.done():
                done.set_exception(error)
            loop.remove_reader(fd)
            return
        message.extend(chunk)
        if _missing(message) == 0:
            if not done.done():
                done.set_result(None)
            loop.remove_reader(fd)

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(timeout or None):
            await done
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)
    return memoryview(message)[_header_size(message) :]


def _header_size(message: bytearray) -> int:
    return 12 if len(message) >= 4 and _LENGTH.unpack_from(message)[0] == -1 else 4


def _missing(message: bytearray) -> int:
    """Bytes still to read of the message begun in ``message``: of its header, then of its body."""
    head = _header_size(message)
    if len(message) < head:
        return head - len(message)
    size = _LENGTH.unpack_from(message)[0] if head == 4 else _LONG_LENGTH.unpack_from(message, 4)[0]
    return head + size - len(message)


def _why(worker: _Worker) -> str:
    if worker.killed:
        return "killed: over the time limit"
    if worker.retire:
        return "out of memory"
    code = worker.process.exitcode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _lost(kind: str, exitcode: int | None, limits: Limits) -> DicomSvcError:
    """The answer for a task whose worker did not answer."""
    if kind == "timeout":
        return Busy(f"the work took longer than the limit of {limits.timeout:g} s (DICOMSVC_WORKER_TIMEOUT); its worker was stopped")
    if kind == "memory":
        return WorkerMemory(f"the work needed more memory than the limit of {limits.memory} bytes (DICOMSVC_WORKER_MEMORY)")
    if kind == "killed":
        return WorkerMemory("the worker was killed (SIGKILL) by the system, most likely for using too much memory")
    how = f"signal {signal.Signals(-exitcode).name}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return InvalidDicom(f"the file crashed the DICOM reader or decoder (its worker process died: {how})")


class ThreadPool:
    """The same interface in threads of this process (DICOMSVC_WORKERS=0: tests, debugging).
    No limits: a thread can be neither capped nor killed."""

    def __init__(self, size: int, setup: Setup = Setup()) -> None:
        self.setup = setup
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="dicomsvc-cpu")

    async def start(self) -> None:
        if self.setup.initializer:
            module, _, function = self.setup.initializer.partition(":")
            getattr(importlib.import_module(module), function)(*self.setup.args)

    def pids(self) -> list[int]:
        return []

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def run_grouped(self, fn: Callable[..., list], item: Any, *shared: Any) -> Any:
        """``WorkerPool.run_grouped`` without grouping: ``fn(*shared, [item])``'s one reply."""
        call = functools.partial(fn, *shared, [item])
        kind, *rest = (await asyncio.get_running_loop().run_in_executor(self._executor, call))[0]
        if kind == "error":
            raise rest[0]
        return rest[0]

    run_alone = run_grouped

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
