"""Removing blobs that no row points at.

An ingest renames its blobs into place just before it commits the row; a crash
between the two leaves files nobody will ever serve. At every start a
background task walks blob storage and removes the blobs of ids the database
does not know. Only files older than the start are looked at, so an ingest
running meanwhile is never touched.

With several replicas sharing the blob store (an S3 bucket, or a shared folder) and the index
(PostgreSQL), another replica's ingest may be between its upload and its commit at any time:
only blobs older than DICOMSVC_SWEEP_GRACE_SECONDS too (default an hour, far longer than any
ingest's upload-to-commit) are candidates, and only one replica sweeps at a time
(``dicomsvc.storage.sweeplock``; the others skip). With S3 the candidates are the bucket's
objects (by their Last-Modified), removed with their local copies.
"""

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from .service import Service, in_background
from .storage import instances, sweeplock
from .storage.blobs import BlobStore

log = logging.getLogger("dicomsvc")
BATCH = 500
START_MARGIN = 2.0  # seconds


def _candidates(root: Path, before: float) -> dict[str, list[Path]]:
    """Blob files (and rendering folders) older than ``before``, by instance id."""
    found: dict[str, list[Path]] = {}
    for folder in root.iterdir():
        if len(folder.name) != 2 or not folder.is_dir():
            continue  # .tmp and anything else
        for entry in os.scandir(folder):
            if entry.stat(follow_symlinks=False).st_mtime >= before:
                continue
            blob_id = entry.name.split(".", 1)[0]
            found.setdefault(blob_id, []).append(Path(entry.path))
    return found


def _remote_candidates(blobs: BlobStore, before: float) -> dict[str, list[str]]:
    """With S3: the keys of the bucket's objects older than ``before``, by instance id
    (``<aa>/<id>.<ext>`` and ``<aa>/<id>.renderings/...``)."""
    found: dict[str, list[str]] = {}
    for entry in blobs.remote.listing():
        folder, _, rest = entry.key.partition("/")
        if len(folder) != 2 or not rest or entry.modified >= before:
            continue
        found.setdefault(rest.split(".", 1)[0].split("/", 1)[0], []).append(entry.key)
    return found


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            BlobStore.remove_tree(path)
        else:
            path.unlink(missing_ok=True)


async def sweep_orphans(svc: Service, before: float) -> int:
    """Remove the blobs of unknown ids older than ``before``; how many ids were swept (0 too
    when another replica holds the sweep lock)."""
    async with sweeplock.held(svc.db) as mine:
        if not mine:
            log.info("orphan sweep skipped: another replica is sweeping")
            return 0
        return await _sweep(svc, before)


async def _sweep(svc: Service, before: float) -> int:
    remote = svc.blobs.remote is not None
    if remote:
        candidates = await svc.io(_remote_candidates, svc.blobs, before)
    else:
        candidates = await svc.io(_candidates, svc.blobs.root, before)
    ids, swept = list(candidates), 0
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        known = await instances.known_ids(svc.db, batch)
        orphans = [path for blob_id in batch if blob_id not in known for path in candidates[blob_id]]
        swept += len({blob_id for blob_id in batch if blob_id not in known})
        if orphans and remote:
            await svc.io(svc.blobs.remove, *orphans)  # the objects and their local copies
        elif orphans:
            await svc.io(_remove, orphans)
    if swept:
        log.info("removed the blobs of %d instance(s) no record points at", swept)
    return swept


@contextlib.asynccontextmanager
async def running(svc: Service) -> AsyncIterator[None]:
    """Sweep once in the background after start-up."""
    # File times come from a coarse kernel clock that may lag time.time() by a tick:
    # leave a margin, so a blob written just after the start is never taken for an orphan.
    # DICOMSVC_SWEEP_GRACE_SECONDS: what another replica may be storing right now is younger
    started = time.time() - max(START_MARGIN, svc.config.sweep_grace_seconds)
    async with in_background(sweep_orphans(svc, started), "dicomsvc-sweep"):
        yield
