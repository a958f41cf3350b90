"""The worker backstop: memory and time limits, a task's leftovers, workers dying with the server."""

import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

import bombs
import workertasks
from app import create_app
from dicomfiles import blob_files, make_ct, notes, save
from dicomsvc.config import Config
from dicomsvc.errors import Busy, InvalidDicom, WorkerMemory
from dicomsvc.options import PLAIN

REPO = Path(__file__).resolve().parent.parent


def limited_client(data_dir: Path, import_root: Path, **settings: str) -> TestClient:
    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "2"}
    return TestClient(create_app(Config.from_env(env | {f"DICOMSVC_{k}": v for k, v in settings.items()})))


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def still_works(client: TestClient, import_root: Path) -> None:
    assert client.get("/healthz").status_code == 200
    save(make_ct(), import_root / "normal.dcm")
    created = client.post("/dicom", json={"path": "normal.dcm"})
    assert created.status_code == 201, created.text
    assert client.get("/image", params={"id": created.json()["id"]}).status_code == 200


def test_a_task_over_the_memory_limit_is_413_and_its_worker_replaced(data_dir, import_root):
    with limited_client(data_dir, import_root, WORKER_MEMORY=str(1 << 30)) as client:
        svc = client.app.state.svc
        before = set(svc.cpu_pool.pids())
        with pytest.raises(WorkerMemory, match="DICOMSVC_WORKER_MEMORY"):
            client.portal.call(svc.cpu, workertasks.allocate_forever)
        after = set(svc.cpu_pool.pids())
        assert len(after) == 2 and len(before - after) == 1  # one worker replaced
        assert not alive((before - after).pop())
        still_works(client, import_root)


def test_a_decoder_over_the_memory_limit_is_413_over_http(data_dir, import_root):
    """With the frame-size check out of the way, a JPEG whose header and data set agree on
    65535 x 65535 x 3 makes the decoder allocate 12 GiB: the worker's address-space limit
    stops it, not the machine."""
    bombs.jpeg_sof0_agreed(import_root / "claims.dcm")
    with limited_client(data_dir, import_root, WORKER_MEMORY=str(1 << 30), MAX_FRAME_BYTES=str(1 << 40)) as client:
        created = client.post("/dicom", json={"path": "claims.dcm"})
        assert created.status_code == 201, created.text  # stored, with a warning and no PNG
        assert "memory" in created.json()["warnings"][0]
        pixels = client.get(f"/dicom/{created.json()['id']}/pixels")
        assert (pixels.status_code, pixels.json()["error"]) == (413, "too_large"), pixels.text
        still_works(client, import_root)


def test_a_task_over_the_time_limit_is_503_busy_and_only_it_fails(data_dir, import_root):
    with limited_client(data_dir, import_root, WORKER_TIMEOUT="2") as client:
        svc = client.app.state.svc
        before = set(svc.cpu_pool.pids())
        with ThreadPoolExecutor(1) as pool:
            sleeper = pool.submit(client.portal.call, svc.cpu, workertasks.sleep, 3600)
            still_works(client, import_root)  # on the other worker, meanwhile
            with pytest.raises(Busy, match="DICOMSVC_WORKER_TIMEOUT"):
                sleeper.result(timeout=300)
        after = set(svc.cpu_pool.pids())
        assert len(after) == 2 and len(before - after) == 1
        assert not alive((before - after).pop())  # killed, not left running
        assert client.portal.call(svc.cpu, workertasks.sleep, 0) == "woke up"
    assert Busy.status == 503 and Busy.code == "busy"


@pytest.mark.parametrize(
    "when, how",
    [("spooled", "exit"), ("placed", "exit"), ("placed", "hang"), ("committed", "exit")],
)
def test_a_worker_dying_mid_ingest_leaves_no_orphans(data_dir, import_root, tmp_path, when, how):
    """Whatever the task wrote is gone when the request is answered, unless its row committed."""
    with limited_client(data_dir, import_root, WORKER_TIMEOUT="3") as client:
        svc = client.app.state.svc
        temp = svc.blobs.tmp / "upload-test.dcm"  # as an upload is spooled, by the server
        save(make_ct(), tmp_path / "ct.dcm")
        shutil.copyfile(tmp_path / "ct.dcm", temp)
        expected = Busy if how == "hang" else InvalidDicom
        with pytest.raises(expected):
            client.portal.call(svc.cpu, workertasks.ingest_then_stop, svc.config, temp, when, how)
        temp.unlink(missing_ok=True)  # the server's own spool, as intake removes it
        stored = [p for p in blob_files(data_dir) if ".tmp" not in p.parts]
        assert not [p for p in blob_files(data_dir) if ".tmp" in p.parts]
        assert notes(data_dir) == []  # the dead worker's note too (the only task run so far)
        if when == "committed":  # a whole record: kept
            assert sorted(p.suffix for p in stored) == [".dcm", ".png"]
            assert client.get("/stats").json()["instances"] == 1
        else:
            assert stored == []
        still_works(client, import_root)


def hold_the_worker(client: TestClient, go: Path):
    """The one worker of ``client``'s pool held (``workertasks.wait_for``) until ``go`` exists:
    the future of that task, submitted from a thread, once the worker has it."""
    pool = client.app.state.svc.cpu_pool
    threads = ThreadPoolExecutor(1)
    held = threads.submit(client.portal.call, pool.run, workertasks.wait_for, str(go))
    threads.shutdown(wait=False)
    deadline = time.monotonic() + 60
    while not pool._idle.empty():
        assert time.monotonic() < deadline, "the worker was not taken"
        time.sleep(0.01)
    return held


def waiting(pool) -> int:
    """Calls of ``run_grouped`` waiting for a worker."""
    return sum(len(group.items) for group in pool._groups.values())


def grouped_counts() -> tuple[float, float]:
    from dicomsvc import metrics

    return metrics.GROUPED._value.get(), metrics.GROUPED_ITEMS._value.get()


def test_grouped_calls_waiting_for_a_worker_run_as_one_task_each_with_its_own_answer(data_dir, import_root, tmp_path):
    """run_grouped: the calls waiting while the only worker is busy go to it as one task, each answered
    with its own reply (one refused alone), one cancelled while waiting left out; a call finding the
    worker idle runs at once, alone."""
    import asyncio

    from dicomsvc.errors import BadRequest

    with limited_client(data_dir, import_root, WORKERS="1") as client:
        pool = client.app.state.svc.cpu_pool
        alone = client.portal.call(pool.run_grouped, workertasks.group_echo, "first", "shared")
        assert alone[1:] == ("shared", "first", 1)
        held = hold_the_worker(client, tmp_path / "go")
        tasks, items = grouped_counts()

        async def four():
            return [asyncio.ensure_future(pool.run_grouped(workertasks.group_echo, item, "shared")) for item in ("a", "bad", "gone", "c")]

        calls = client.portal.call(four)
        deadline = time.monotonic() + 60
        while waiting(pool) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.portal.call(lambda: calls[2].cancel())  # its caller gone while waiting
        (tmp_path / "go").touch()
        assert held.result(timeout=120) == "went on"

        async def answers():
            return await asyncio.gather(*calls, return_exceptions=True)

        a, b, gone, c = client.portal.call(answers)
        assert [a[1:], c[1:]] == [("shared", "a", 3), ("shared", "c", 3)] and a[0] == c[0] == alone[0]
        assert isinstance(b, BadRequest) and isinstance(gone, asyncio.CancelledError)
        assert grouped_counts() == (tasks + 1, items + 3)
        with pytest.raises(BadRequest):  # alone too
            client.portal.call(pool.run_grouped, workertasks.group_echo, "bad", "shared")


def grouped_while_held(client, go: Path, fn, names: tuple[str, ...]) -> list:
    """Path ingests of ``names`` by ``fn`` (an ``ingest_group``-like task) queued with
    ``run_grouped`` while the only worker is held, released once all wait together: each
    call's outcome (an error as a value)."""
    import asyncio

    svc = client.app.state.svc
    held = hold_the_worker(client, go)

    async def queued():
        return [asyncio.ensure_future(svc.cpu_pool.run_grouped(fn, ("path", name, PLAIN), svc.config)) for name in names]

    calls = client.portal.call(queued)
    deadline = time.monotonic() + 60
    while waiting(svc.cpu_pool) < len(names):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.touch()
    held.result(timeout=120)

    async def answers():
        return await asyncio.gather(*calls, return_exceptions=True)

    return client.portal.call(answers)


def test_a_worker_dying_mid_group_fails_every_item_and_leaves_no_orphans(data_dir, import_root, tmp_path):
    """A grouped ingest whose worker dies once its items' blobs are in place, before any row, alone
    too: every call answered as a lone ingest's would be (422), nothing left in blob storage."""
    with limited_client(data_dir, import_root, WORKERS="1") as client:
        names = ("a.dcm", "b.dcm", "c.dcm")
        for name in names:
            save(make_ct(), import_root / name)
        tasks, _ = grouped_counts()
        answers = grouped_while_held(client, tmp_path / "go", workertasks.group_then_stop, names)
        assert [type(a) for a in answers] == [InvalidDicom] * 3  # each alone too
        assert grouped_counts()[0] == tasks + 1  # the three in one task (then each alone)
        assert blob_files(data_dir) == [] and client.get("/stats").json()["instances"] == 0
        still_works(client, import_root)


def test_the_item_that_brings_a_group_down_fails_alone(data_dir, import_root, tmp_path):
    """One grouped ingest kills the worker (its group's blobs in place, no row): the group's items go
    again one by one, so only it is answered as a crash (422); the others are stored (201) as if
    it had never been there, and nothing is left of it."""
    from dicomsvc.results import Ingested

    with limited_client(data_dir, import_root, WORKERS="1") as client:
        names = ("a.dcm", "crash.dcm", "b.dcm")
        for name in names:
            save(make_ct(), import_root / name)
        tasks, _ = grouped_counts()
        a, crash, b = grouped_while_held(client, tmp_path / "go", workertasks.group_dies_with_crash_dcm, names)
        assert isinstance(crash, InvalidDicom)
        assert isinstance(a, Ingested) and isinstance(b, Ingested) and a.created and b.created, (a, b)
        assert grouped_counts()[0] == tasks + 1
        assert client.get("/stats").json()["instances"] == 2
        for done, name in ((a, "a.dcm"), (b, "b.dcm")):
            assert client.get(f"/dicom/{done.id}/file").content == (import_root / name).read_bytes()
        assert len(blob_files(data_dir)) == 4  # two DICOM files and their PNGs: nothing of crash.dcm
        still_works(client, import_root)


def test_a_decoder_panic_is_a_warning_then_415_in_worker_processes(process_client, import_root):
    bombs.rle_panic(import_root / "panic.dcm")
    created = process_client.post("/dicom", json={"path": "panic.dcm"})
    assert created.status_code == 201, created.text
    assert "PanicException" in created.json()["warnings"][0]
    instance = created.json()["id"]
    for url in ("/image", f"/dicom/{instance}/pixels"):
        answer = process_client.get(url, params={"id": instance} if url == "/image" else None)
        assert (answer.status_code, answer.json()["error"]) == (415, "unsupported_transfer_syntax"), url
    still_works(process_client, import_root)


def test_an_idle_worker_returns_freed_heap_to_the_system():
    """A task's freed heap stays with glibc's malloc until the worker has been idle for
    IDLE_TRIM_S, then malloc_trim gives it back (issue 12)."""
    import asyncio

    from dicomsvc.workerproc import IDLE_TRIM_S
    from dicomsvc.workers import Limits, WorkerPool

    async def main() -> tuple[int, int]:
        pool = WorkerPool(1, Limits())
        await pool.start()
        try:
            peak = await pool.run(workertasks.churn_heap, 200)
            deadline = time.monotonic() + 60  # a liveness bound: each check lets it idle twice as long as needed
            while True:
                await asyncio.sleep(2 * IDLE_TRIM_S)
                now = await pool.run(workertasks.rss_kib)
                if now < peak - 150 * 1024 or time.monotonic() > deadline:
                    return peak, now
        finally:
            await pool.close()

    peak, now = asyncio.run(main())
    assert now < peak - 150 * 1024, (peak, now)  # most of the 200 MiB given back


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_worker_holds_its_heap_thresholds():
    """Issue 12: a worker's blocks below heap.MMAP_THRESHOLD come from its heap, so what one
    ingest frees serves the next one. With glibc's moving thresholds an ingest's 0.5-1 MB
    buffers were mapped on their own or trimmed off the heap and faulted in again: 100-270
    minor faults an instance in each worker, 7 with the thresholds held."""
    import asyncio

    import heaptasks
    from dicomsvc.heap import MMAP_THRESHOLD
    from dicomsvc.workers import Limits, WorkerPool

    sizes = [MMAP_THRESHOLD - (1 << 20), MMAP_THRESHOLD - 4096, MMAP_THRESHOLD + (1 << 20)]

    async def main() -> list[bool]:
        pool = WorkerPool(1, Limits())
        await pool.start()
        try:
            return await pool.run(heaptasks.mapped_on_their_own, sizes)
        finally:
            await pool.close()

    assert asyncio.run(main()) == [False, False, True]  # the largest: mapped on its own still


def test_one_task_at_a_time_goes_to_the_same_warm_worker():
    """Issue 12: the idle worker last used takes the next task (its SQLite page cache and CPU
    caches warm), not each worker in turn; under load every worker is still used."""
    import asyncio

    from dicomsvc.workers import Limits, WorkerPool

    async def main() -> tuple[list[int], set[int], set[int]]:
        pool = WorkerPool(2, Limits())
        await pool.start()
        try:
            one_by_one = [await pool.run(workertasks.pid) for _ in range(6)]
            together = await asyncio.gather(*(pool.run(workertasks.sleep_pid, 0.3) for _ in range(2)))
            return one_by_one, set(together), set(pool.pids())
        finally:
            await pool.close()

    one_by_one, together, pids = asyncio.run(main())
    assert len(set(one_by_one)) == 1, one_by_one  # handed out in turn before: two pids alternating
    assert together == pids  # two at once: both workers


def test_a_ready_worker_gets_its_task_and_answers_without_a_thread():
    """Issue 12: the task is written and the reply read in the event loop (a hop to a thread and
    back cost ~120 us of CPU): with the pool's threads unusable a ready worker still answers,
    small or large, in a message spread over many reads (multiprocessing.connection's framing)."""
    import asyncio

    from dicomsvc.workers import Limits, WorkerPool

    reply_pieces = (3 << 20) // 16 + 5  # a reply of more than 3 MiB: several reads (READ_SIZE each at most)
    task_pieces = (200 << 10) // 256  # a task of 200 KiB: more than INLINE_SEND

    class NoThreads:
        def submit(self, *args, **kwargs):
            raise AssertionError("a thread was used")

    async def main():
        pool = WorkerPool(1, Limits())
        await pool.start()
        threads, pool._threads = pool._threads, NoThreads()
        try:
            small = await pool.run(workertasks.echo, b"x" * 100)
            large = await pool.run(workertasks.repeat, b"0123456789abcdef", reply_pieces)
            pool._threads = threads  # a task larger than INLINE_SEND is written from a thread
            big_task = await pool.run(workertasks.echo, bytes(range(256)) * task_pieces)
            return small, large, big_task
        finally:
            pool._threads = threads
            await pool.close()

    small, large, big_task = asyncio.run(main())
    assert small == b"x" * 100
    assert large == b"0123456789abcdef" * reply_pieces
    assert big_task == bytes(range(256)) * task_pieces


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return found


def descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [d for child in found for d in descendants(child)]


def is_fork_server(pid: int) -> bool:
    try:
        return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def test_workers_are_forked_from_a_fork_server_that_preloaded_their_modules(process_client):
    """Issue 12: the workers share the fork server's imports (numpy, pydicom, the pipeline)
    copy-on-write instead of importing their own, and keep them shared (gc.freeze); the
    one-thread BLAS setting is theirs."""
    pool = process_client.app.state.svc.cpu_pool
    server = pool.fork_server_pid()
    assert server is not None and alive(server) and is_fork_server(server)
    assert sorted(pool.pids()) == sorted(children(server))
    maps = Path(f"/proc/{server}/maps").read_text()
    assert "_multiarray_umath" in maps and "_libjpeg" in maps  # imported before any fork
    facts = process_client.portal.call(process_client.app.state.svc.cpu, workertasks.inherited)
    assert facts["frozen"] > 10_000  # the objects it was forked with: left alone by the GC
    assert facts["blas_threads"] == "1"


def test_sigterm_to_the_process_group_is_the_servers_to_handle(data_dir, import_root):
    """``kill -TERM -<pgid>`` and systemd's KillMode=control-group signal every process: the
    workers and their fork server ignore it (a worker killed mid-task would fail it and leave
    its note of placed blobs), the server stops them when it stops, and they leave no note."""
    with limited_client(data_dir, import_root) as client:
        pool = client.app.state.svc.cpu_pool
        still_works(client, import_root)
        assert notes(data_dir)  # the worker that stored it keeps its note while it lives
        workers = sorted(pool.pids())
        for pid in [*workers, pool.fork_server_pid()]:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        assert all(alive(pid) for pid in workers) and sorted(pool.pids()) == workers
        still_works(client, import_root)
    assert notes(data_dir) == [] and not any(alive(pid) for pid in workers)


PRELOADED_PAGES = """
import json, os
os.environ["OPENBLAS_NUM_THREADS"] = "1"
from dicomsvc.service import WORKER_MODULES
import dicomsvc.workerproc, dicomsvc.tasks
for name in WORKER_MODULES:
    __import__(name)
from dicomsvc.libpages import resident
print(resident())
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="/proc/<pid>/smaps is Linux's")
def test_the_fork_server_lets_go_of_the_library_pages_it_only_ran_to_load_them(process_client, import_root):
    """Issue 12: after its preloads the fork server runs only its fork loop; the library code it
    ran importing numpy, pydicom and the pipeline leaves its resident set (it stays in the page
    cache for the workers) instead of being counted in the summed peak RSS once more."""
    pool = process_client.app.state.svc.cpu_pool
    server = pool.fork_server_pid()
    from dicomsvc.libpages import resident

    kept = resident(server)
    loaded = int(subprocess.run([sys.executable, "-c", PRELOADED_PAGES], capture_output=True, text=True,
                                timeout=120, check=True, cwd=REPO).stdout)  # fmt: skip
    assert loaded > 8 << 20  # what the same imports leave resident in a process that keeps it
    assert kept < loaded / 3, (kept, loaded)  # the fork loop's own code touched again
    still_works(process_client, import_root)  # workers forked after it: parse, render, store


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_workers_die_with_a_killed_server(tmp_path):
    from test_jobs import free_port

    env = dict(os.environ) | {
        "DICOMSVC_DATA_DIR": str(tmp_path / "data"),
        "DICOMSVC_IMPORT_ROOT": str(tmp_path / "import"),
        "DICOMSVC_WORKERS": "2",
        "DICOMSVC_LOG_LEVEL": "warning",
    }
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "app:create_app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        # the fork server and its two workers, and no resource tracker (workers._no_resource_tracker)
        spawned = descendants(server.pid)
        assert len([pid for pid in spawned if is_fork_server(pid)]) == 3, spawned  # its children run its code
        assert len(spawned) == 3 and not any(b"resource_tracker" in cmdline(pid) for pid in spawned), spawned
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    deadline = time.monotonic() + 10  # a liveness bound: they go at once
    while any(alive(pid) for pid in spawned) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in spawned if alive(pid)]


BUSY_POOL = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import workertasks
from dicomsvc.workers import Limits, WorkerPool

async def main():
    pool = WorkerPool(2, Limits())
    await pool.start()
    busy = asyncio.ensure_future(pool.run(workertasks.sleep, 3600))
    await asyncio.sleep(0.5)
    print(*pool.pids(), pool.fork_server_pid(), flush=True)
    await busy

asyncio.run(main())
"""


def test_busy_workers_and_the_fork_server_die_with_a_killed_parent(tmp_path):
    """An idle worker leaves when its pipe closes; a busy one (here: asleep in a task) keeps
    the fork server's "alive" pipe open, so the kernel must kill both (PR_SET_PDEATHSIG:
    the fork server's when the server goes, the worker's when the fork server goes)."""
    script = BUSY_POOL.format(tests=str(Path(__file__).parent))
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3 and all(alive(pid) for pid in pids)
        assert is_fork_server(pids[2]) and set(pids[:2]) == set(children(pids[2]))
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 10  # a liveness bound: they go at once
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if alive(pid)]
