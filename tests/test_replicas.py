"""Several replicas of the service on one index (README "Running at scale"): the same instance
stored at the same moment by two processes is stored once (the database's unique constraint on
SOP Instance UID + pixel hash decides; the loser answers 200 with the winner's id and removes
its blobs), on SQLite and, with DICOMSVC_TEST_POSTGRES=1, on PostgreSQL."""

import asyncio
import multiprocessing
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np

import indexdb
import racers
from dicomfiles import blob_files, make_ct, save
from dicomsvc.config import Config
from dicomsvc.storage import sqlite
from dicomsvc.storage.blobs import BlobStore


def make_files(root: Path, n: int, seed: int = 11) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        save(make_ct(rng.integers(0, 1500, (16, 16), dtype=np.int16)), root / f"{i:03d}.dcm")
        names.append(f"{i:03d}.dcm")
    return names


def stored_ids(config: Config) -> list[str]:
    return [row["id"] for row in indexdb.dict_rows(config, "SELECT id FROM dicom")]


def blob_ids(data_dir: Path) -> dict[str, int]:
    """Blob files in place by instance id (temporary files would count as an id of their own)."""
    found: dict[str, int] = {}
    for path in blob_files(data_dir):
        key = path.name.split(".", 1)[0]
        found[key] = found.get(key, 0) + 1
    return found


def test_two_processes_storing_the_same_instance_at_once_store_it_once(config, data_dir, import_root):
    """Two processes ingest the same 25 files; for each, both have looked for a duplicate and found
    none before either goes on (a barrier), so both insert the same instance at once: one stores
    it, the other gets its id back as a duplicate and removes its own blobs."""

    async def create_schema():
        await (await sqlite.open_database(config.database)).close()

    data_dir.mkdir(parents=True)
    asyncio.run(create_schema())
    BlobStore.of(config).open()
    names = make_files(import_root, 25)
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    racing = [spawn.Process(target=racers.ingest_in_lockstep, args=(config, names, barrier, results)) for _ in range(2)]
    for process in racing:
        process.start()
    try:
        answers = [results.get(timeout=120) for _ in range(2 * len(names))]
    finally:
        for process in racing:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert not [a for a in answers if a[1] == "error"], answers
    by_name: dict[str, list[tuple[bool, str]]] = {}
    for name, created, instance_id in answers:
        by_name.setdefault(name, []).append((created, instance_id))
    for name, pair in by_name.items():
        assert sorted(created for created, _ in pair) == [False, True], (name, pair)  # one 201, one 200
        assert pair[0][1] == pair[1][1], (name, pair)  # the same id
    ids = stored_ids(config)
    assert len(ids) == len(set(ids)) == len(names)
    assert blob_ids(data_dir) == {instance_id: 2 for instance_id in ids}  # DICOM + PNG each; the losers' gone


def test_the_same_file_posted_twice_at_once_answers_201_and_200_with_one_id(process_config, data_dir, import_root):
    """Over HTTP, on the worker processes: pairs of identical uploads sent at the same moment."""
    import socket
    import time

    import uvicorn

    from app import create_app

    names = make_files(import_root, 20, seed=12)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(process_config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/dicom"
    try:
        for name in names:
            body = (import_root / name).read_bytes()
            barrier, answers = threading.Barrier(2), []

            def post() -> None:
                with httpx.Client(timeout=60) as http:
                    barrier.wait(timeout=30)
                    answers.append(http.post(url, content=body, headers={"content-type": "application/dicom"}))

            posters = [threading.Thread(target=post) for _ in range(2)]
            for poster in posters:
                poster.start()
            for poster in posters:
                poster.join(timeout=90)
            assert sorted(a.status_code for a in answers) == [200, 201], [(a.status_code, a.text) for a in answers]
            assert answers[0].json()["id"] == answers[1].json()["id"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    ids = stored_ids(process_config)
    assert len(ids) == len(set(ids)) == len(names)
    assert blob_ids(data_dir) == {instance_id: 2 for instance_id in ids}
    shutil.rmtree(import_root)
