"""A process that ingests files in lockstep with another (tests/test_replicas.py): importable by
a spawned process (tests/ is on its sys.path), so it lives here rather than in a test module."""

from dicomsvc import ingest
from dicomsvc.config import Config
from dicomsvc.storage import instances


def ingest_in_lockstep(config: Config, names: list[str], barrier, results) -> None:
    """Ingest ``names`` from the import root, one by one; each time the duplicate check has found
    nothing, wait for the other racer to have found nothing too, so both go on to store the same
    instance at the same moment: the database's unique constraint alone decides. Puts
    (name, created, id) on ``results`` for each, or (name, error, text)."""
    looked_up = instances.find_instance

    def find_then_wait(w, sop_instance_uid, pixel_hash):
        found = looked_up(w, sop_instance_uid, pixel_hash)
        if found is None:
            barrier.wait(timeout=60)
        return found

    instances.find_instance = find_then_wait
    for name in names:
        try:
            done = ingest.ingest_import(config, name)
            results.put((name, done.created, done.id))
        except Exception as exc:  # reported to the test, which fails on it
            results.put((name, "error", f"{type(exc).__name__}: {exc}"))
