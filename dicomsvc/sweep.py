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
objects (by their Last-Modified), removed with their local copies; and the job spools in the
bucket (``spool/<folder>/...``, uploaded before the job's row is written: ``jobs.submit``) that
no job holds -- a request that failed between the upload and the row -- older than the grace
period too.

Dataset exports' results (``exports.expire``) are removed DICOMSVC_EXPORT_RESULT_SECONDS after
their job finished: looked for at start and then every hour (or every
DICOMSVC_EXPORT_RESULT_SECONDS, when that is shorter), on every replica (each its own folder;
the bucket's objects by whichever comes first).
"""

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from . import exports
from .service import Service, in_background
from .storage import instances, sweeplock
from .storage import jobs as job_rows
from .storage.blobs import BlobStore

log = logging.getLogger("dicomsvc")
BATCH = 500
START_MARGIN = 2.0  # seconds
EXPIRY_EVERY = 3600  # seconds between looks for expired export results (at most)


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
    if remote:
        swept += await _sweep_spools(svc, before)
    return swept


def _remote_spools(blobs: BlobStore, before: float) -> dict[str, list[str]]:
    """With S3: the keys of job spool objects (``spool/<folder>/<name>``) by folder, for the
    folders whose objects are all older than ``before`` (one being uploaded now is left alone)."""
    found: dict[str, list[str]] = {}
    fresh: set[str] = set()
    for entry in blobs.remote.listing("spool/"):
        folder = entry.key.split("/")[1] if entry.key.count("/") >= 2 else ""
        if not folder:
            continue
        found.setdefault(folder, []).append(entry.key)
        if entry.modified >= before:
            fresh.add(folder)
    return {folder: keys for folder, keys in found.items() if folder not in fresh}


async def _sweep_spools(svc: Service, before: float) -> int:
    """Remove the bucket's job spools no job holds (the request that uploaded one failed before
    its job's row was written); how many spools."""
    candidates = await svc.io(_remote_spools, svc.blobs, before)
    if not candidates:
        return 0
    held = {Path(p).name for p in await job_rows.held_spools(svc.db)}
    orphans = [keys for folder, keys in candidates.items() if folder not in held]
    for keys in orphans:
        await svc.io(svc.blobs.remote.delete, *keys)
    if orphans:
        log.info("removed %d job spool(s) in the bucket that no job holds", len(orphans))
    return len(orphans)


@contextlib.asynccontextmanager
async def running(svc: Service) -> AsyncIterator[None]:
    """Sweep once in the background after start-up."""
    # File times come from a coarse kernel clock that may lag time.time() by a tick:
    # leave a margin, so a blob written just after the start is never taken for an orphan.
    # DICOMSVC_SWEEP_GRACE_SECONDS: what another replica may be storing right now is younger
    started = time.time() - max(START_MARGIN, svc.config.sweep_grace_seconds)
    async with in_background(sweep_orphans(svc, started), "dicomsvc-sweep"), \
            in_background(_expire_forever(svc), "dicomsvc-export-expiry"):  # fmt: skip
        yield


async def _expire_forever(svc: Service) -> None:
    """Remove expired export results now and then, for as long as the app runs."""
    while True:
        try:
            await exports.expire(svc)
        except Exception as exc:  # the database or the bucket away for a moment: next time
            log.error("could not remove expired export results: %s", type(exc).__name__)
        await asyncio.sleep(min(EXPIRY_EVERY, svc.config.export_result_seconds))
