"""Removing blobs that no row points at.

An ingest renames its blobs into place just before it commits the row; a crash
between the two leaves files nobody will ever serve. At every start a
background task walks blob storage and removes the blobs of ids the database
does not know. Only files older than the start are looked at, so an ingest
running meanwhile is never touched.
"""

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from .service import Service, in_background
from .storage import instances
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


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            BlobStore.remove_tree(path)
        else:
            path.unlink(missing_ok=True)


async def sweep_orphans(svc: Service, before: float) -> int:
    """Remove the blobs of unknown ids; how many ids were swept."""
    candidates = await svc.io(_candidates, svc.blobs.root, before)
    ids, swept = list(candidates), 0
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        known = await instances.known_ids(svc.db, batch)
        orphans = [path for blob_id in batch if blob_id not in known for path in candidates[blob_id]]
        swept += len({blob_id for blob_id in batch if blob_id not in known})
        if orphans:
            await svc.io(_remove, orphans)
    if swept:
        log.info("removed the blobs of %d instance(s) no record points at", swept)
    return swept


@contextlib.asynccontextmanager
async def running(svc: Service) -> AsyncIterator[None]:
    """Sweep once in the background after start-up."""
    # File times come from a coarse kernel clock that may lag time.time() by a tick:
    # leave a margin, so a blob written just after the start is never taken for an orphan.
    started = time.time() - START_MARGIN
    async with in_background(sweep_orphans(svc, started), "dicomsvc-sweep"):
        yield
