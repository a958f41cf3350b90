"""Several replicas of the service on one index (README "Running at scale"): the same instance
stored at the same moment by two processes is stored once (the database's unique constraint on
SOP Instance UID + pixel hash decides; the loser answers 200 with the winner's id and removes
its blobs), on SQLite and, with DICOMSVC_TEST_POSTGRES=1, on PostgreSQL."""

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

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


def test_the_same_file_posted_twice_at_once_answers_201_and_200_with_one_id(live_server, config, data_dir, import_root):
    """Over HTTP: pairs of identical uploads sent at the same moment (two ingests in flight)."""
    names = make_files(import_root, 20, seed=12)
    url = f"{live_server}/dicom"
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
    ids = stored_ids(config)
    assert len(ids) == len(set(ids)) == len(names)
    assert blob_ids(data_dir) == {instance_id: 2 for instance_id in ids}


# Three replicas: one PostgreSQL, one S3 bucket, three `dicomsvc serve` processes (make test-scale) ---

REPLICAS = 3
FILES = 300  # each sent to two replicas at once
JOB_FILES = 160  # the ZIP job whose replica is killed


class Bucket:
    """The replicas' blob store as one bucket on the session's throwaway SeaweedFS (tests/seaweed.py):
    each replica's data directory holds only its temporary files and read cache."""

    PREFIX = "blobs"

    def __init__(self, server) -> None:
        self.server, self.bucket = server, server.new_bucket()

    def env(self) -> dict[str, str]:
        return self.server.env(self.bucket, self.PREFIX)

    def prepare(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True)  # nothing shared: a job's input reaches another replica through the bucket

    def keys(self) -> list[str]:
        """Every blob in the bucket, as the database records its key (relative to the prefix)."""
        return [key for key in self.all_keys() if len(key.split("/")[0]) == 2]

    def all_keys(self) -> list[str]:
        """Every object under the prefix (blobs, job spools), relative to it."""
        start = len(self.PREFIX) + 1
        return [key[start:] for key in self.server.keys(self.bucket, self.PREFIX + "/")]


def instance_of(key: str) -> str:
    """The instance id a blob key belongs to: ``aa/<id>.dcm``, ``aa/<id>.png``, ``aa/<id>/<rendering>``."""
    return key.split("/")[1].split(".", 1)[0]


class Replica:
    def __init__(self, index: int, root: Path, env: dict[str, str], store) -> None:
        self.index, self.data_dir = index, root / f"replica{index}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ) | env | {
            "DICOMSVC_DATA_DIR": str(self.data_dir),
            "DICOMSVC_HOST": "127.0.0.1",
            "DICOMSVC_PORT": str(self.port),
        }
        store.prepare(self.data_dir)
        self.log = root / f"replica{index}.log"
        self.process: subprocess.Popen | None = None

    def start(self, **more: str) -> None:
        dicomsvc = Path(sys.executable).with_name("dicomsvc")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [dicomsvc, "serve"], env=self.env | more, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir
            )

    def wait_ready(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"replica {self.index} exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"replica {self.index} not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rendering_hits(replica: Replica) -> float:
    """``dicomsvc_rendering_cache_total{result="hit"}`` of a replica (its own counter)."""
    for line in httpx.get(f"{replica.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("dicomsvc_rendering_cache_total") and 'result="hit"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_three_replicas_share_one_index_and_one_blob_store(request, tmp_path):
    """Three `dicomsvc serve` replicas, each with a data directory of its own, one PostgreSQL and
    one S3 bucket (SeaweedFS): the same 300 files sent through all three at once (each to two replicas) are
    stored once each; a ZIP job's replica is killed (-9) mid-job and another finishes it with
    nothing doubled; a rendering cached by one is served by another; every blob row's blob is
    there and, once the crash's leftovers are swept, no blob without a row."""
    pg, s3 = request.getfixturevalue("postgres"), request.getfixturevalue("s3_server")
    if pg is None or s3 is None:
        pytest.skip("the scale run: a throwaway PostgreSQL and SeaweedFS (make test-scale: DICOMSVC_TEST_POSTGRES=1 DICOMSVC_TEST_S3=1)")
    store = Bucket(s3)
    database_url = pg.new_database()
    import_root = tmp_path / "import"
    import_root.mkdir()
    env = store.env() | {
        "DICOMSVC_DATABASE_URL": database_url,
        "DICOMSVC_IMPORT_ROOT": str(import_root),
        "DICOMSVC_WORKERS": "1",  # 3 replicas on 2 cores
        "DICOMSVC_SYNC_LIMIT": "10",  # the ZIP becomes a job
        "DICOMSVC_LOG_LEVEL": "info",
        "DICOMSVC_JOB_LEASE_SECONDS": "4",
        "DICOMSVC_JOB_HEARTBEAT_SECONDS": "1",
        "DICOMSVC_JOB_POLL_SECONDS": "1",
        "DICOMSVC_MIN_FREE_BYTES": "0",
    }
    replicas = [Replica(i, tmp_path, env, store) for i in range(REPLICAS)]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        _ingest_through_two_replicas_each(replicas, tmp_path)
        job_id, killed = _a_job_whose_replica_is_killed(replicas, tmp_path, database_url)
        _renderings_are_shared(replicas, killed, database_url)
        # the crash's leftovers (blobs of a chunk in flight, never committed) are the start-up
        # sweep's: the killed replica comes back and sweeps (nothing else is being written now)
        replicas[killed].start(DICOMSVC_SWEEP_GRACE_SECONDS="0")
        replicas[killed].wait_ready()
        rows = _index_rows(database_url)
        wanted = {key for row in rows for key in (row["dcm_blob"], row["png_blob"]) if key}
        deadline = time.monotonic() + 60
        while orphans := {key for key in store.keys() if instance_of(key) not in {r["id"] for r in rows}}:
            assert time.monotonic() < deadline, f"{len(orphans)} orphan blob(s): {sorted(orphans)[:5]}"
            time.sleep(0.5)
        assert wanted <= set(store.keys()), "a row's blob is missing"
        left = [key for key in store.all_keys() if len(key.split("/")[0]) != 2]
        assert not left, f"objects other than blobs left in the bucket (the finished job's spool?): {left[:5]}"
    finally:
        for replica in replicas:
            replica.stop()
    assert len(rows) == len({r["sop_instance_uid"] for r in rows}) == FILES + JOB_FILES
    for replica in replicas:
        text = replica.log.read_text()
        assert "Traceback" not in text and "internal error" not in text, text[-3000:]


def _ingest_through_two_replicas_each(replicas: list[Replica], tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    folder = tmp_path / "files"
    names = make_files(folder, FILES, seed=21)
    bodies = {name: (folder / name).read_bytes() for name in names}
    # file i to replicas i and i+1 (mod 3), the two posts side by side in the queue
    tasks = [(name, replicas[(i + k) % REPLICAS]) for i, name in enumerate(names) for k in (0, 1)]
    local, clients = threading.local(), []

    def post(task):
        name, replica = task
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=120)
            clients.append(local.http)
        answer = local.http.post(f"{replica.url}/dicom", content=bodies[name], headers={"content-type": "application/dicom"})
        return name, answer.status_code, answer.json()

    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, tasks))
    finally:
        for http in clients:
            http.close()
    by_name: dict[str, list[tuple[int, dict]]] = {}
    for name, status, body in answers:
        by_name.setdefault(name, []).append((status, body))
    for name, pair in by_name.items():
        assert sorted(status for status, _ in pair) == [200, 201], (name, pair)
        assert pair[0][1]["id"] == pair[1][1]["id"], (name, pair)


def _a_job_whose_replica_is_killed(replicas: list[Replica], tmp_path: Path, database_url: str) -> tuple[str, int]:
    import zipfile

    folder = tmp_path / "job"
    make_files(folder, JOB_FILES, seed=22)
    archive = tmp_path / "job.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for path in sorted(folder.iterdir()):
            out.write(path, path.name)
    with open(archive, "rb") as body:
        answer = httpx.post(
            f"{replicas[0].url}/dicom", content=body, headers={"content-type": "application/zip"}, timeout=120
        )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job"]
    deadline = time.monotonic() + 120
    while True:  # some of it done, by whichever replica claimed it
        job = httpx.get(f"{replicas[0].url}/jobs/{job_id}", timeout=10).json()
        claimed = _job_row(database_url, job_id)["claimed_by"]
        if claimed and job["processed"] >= 16:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    pid = int(claimed.split(":")[1])
    (killed,) = [r.index for r in replicas if r.process.pid == pid]
    replicas[killed].process.send_signal(signal.SIGKILL)  # a crash, mid-job
    replicas[killed].process.wait(timeout=10)
    assert job["processed"] < JOB_FILES, "the job finished before its replica could be killed"
    survivor = replicas[(killed + 1) % REPLICAS]
    deadline = time.monotonic() + 180
    while (job := httpx.get(f"{survivor.url}/jobs/{job_id}", timeout=10).json())["status"] != "done":
        assert time.monotonic() < deadline and job["status"] != "failed", job
        time.sleep(0.1)
    assert job["total"] == job["processed"] == JOB_FILES, job
    assert job["failed"] == 0 and job["created"] + job["duplicates"] == JOB_FILES, job
    finisher = _job_row(database_url, job_id)["claimed_by"]
    assert finisher != claimed and int(finisher.split(":")[1]) != pid, "the job did not move to another replica"
    return job_id, killed


def _renderings_are_shared(replicas: list[Replica], killed: int, database_url: str) -> None:
    """A rendering made (and cached in the blob store) by one replica is served by another from there."""
    one, other = [r for r in replicas if r.index != killed][:2]
    instance_id = _index_rows(database_url)[0]["id"]
    params = {"id": instance_id, "width": "8", "format": "png"}
    made = httpx.get(f"{one.url}/image", params=params, timeout=30)
    assert made.status_code == 200, made.text
    hits = rendering_hits(other)
    served = httpx.get(f"{other.url}/image", params=params, timeout=30)
    assert served.status_code == 200 and served.content == made.content
    assert rendering_hits(other) == hits + 1, "the other replica rendered it again"


def _index_rows(database_url: str) -> list[dict]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT id, sop_instance_uid, dcm_blob, png_blob FROM dicom ORDER BY pk").fetchall()


def _job_row(database_url: str, job_id: str) -> dict:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT status, claimed_by FROM job WHERE id = %s", (job_id,)).fetchone()


@pytest.mark.postgres_only
def test_an_instance_deleted_through_one_replica_is_not_served_from_another_replicas_read_cache(tmp_path, import_root):
    """Replica B holds the /image and /tags answers in its read cache; replica A deletes the
    instance. Before: B went on serving them from memory (its cache trusted every delete to run
    in its own process), 200 for an instance that no longer exists."""
    from starlette.testclient import TestClient

    from app import create_app

    shared = tmp_path / "shared-blobs"
    shared.mkdir()
    url = indexdb.database_env(tmp_path / "a")["DICOMSVC_DATABASE_URL"]
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "blobs").symlink_to(shared)  # one blob store (as a bucket is)
        configs.append(Config.from_env({
            "DICOMSVC_DATA_DIR": str(tmp_path / name), "DICOMSVC_IMPORT_ROOT": str(import_root),
            "DICOMSVC_WORKERS": "0", "DICOMSVC_DATABASE_URL": url,
        }))  # fmt: skip
    make_files(import_root, 1, seed=13)
    PLAIN = {"accept-encoding": "identity"}  # a /tags answer the read cache gives (gzip: the stack's)
    with TestClient(create_app(configs[0])) as a, TestClient(create_app(configs[1])) as b:
        instance_id = a.post("/dicom", json={"path": "000.dcm"}).json()["id"]
        for _ in range(2):  # the second from B's read cache
            assert b.get("/image", params={"id": instance_id}).status_code == 200
            assert b.get("/tags", params={"id": instance_id}, headers=PLAIN).status_code == 200
        assert ("png", instance_id) in b.app.state.read_cache and ("tags", instance_id) in b.app.state.read_cache
        assert a.delete(f"/dicom/{instance_id}").status_code in (200, 204)
        image, tags = b.get("/image", params={"id": instance_id}), b.get("/tags", params={"id": instance_id}, headers=PLAIN)
        etagged = b.get("/image", params={"id": instance_id}, headers={"if-none-match": f'"{instance_id}.png"'})
    assert (image.status_code, tags.status_code, etagged.status_code) == (404, 404, 404), (image.text, tags.text)
    assert image.json()["error"] == tags.json()["error"] == "not_found"


@pytest.mark.postgres_only
def test_replicas_without_an_anon_secret_share_the_one_the_index_keeps(tmp_path, import_root):
    """No DICOMSVC_ANON_SECRET: the first replica's secret (here an anon.secret its data directory
    held already) is kept in the index and used by the next, so the same file anonymized through
    either gets the same pseudonyms -- the second upload is the first's duplicate. Before: each
    replica made its own secret, and the same patient two sets of UIDs."""
    from starlette.testclient import TestClient

    from app import create_app

    url = indexdb.database_env(tmp_path / "a")["DICOMSVC_DATABASE_URL"]
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(Config.from_env({
            "DICOMSVC_DATA_DIR": str(tmp_path / name), "DICOMSVC_IMPORT_ROOT": str(import_root),
            "DICOMSVC_WORKERS": "0", "DICOMSVC_DATABASE_URL": url,
        }))  # fmt: skip
    (tmp_path / "a" / "anon.secret").write_text("made-before-by-a\n")
    body = (import_root / make_files(import_root, 1, seed=14)[0]).read_bytes()
    answers = []
    with TestClient(create_app(configs[0])) as a, TestClient(create_app(configs[1])) as b:
        for client in (a, b):
            answers.append(client.post("/dicom?anonymize=true", content=body, headers={"content-type": "application/dicom"}))
    assert [r.status_code for r in answers] == [201, 200], [r.text for r in answers]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert (tmp_path / "b" / "anon.secret").read_text() == "made-before-by-a"  # a copy, kept private
    assert (tmp_path / "b" / "anon.secret").stat().st_mode & 0o777 == 0o600
