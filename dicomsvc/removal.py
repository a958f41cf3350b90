"""Deleting stored instances: what ``DELETE /dicom/{id}`` does (``http.catalog``), callable
from background work too (a send job's ``delete_after``, ``dicomsvc.sendjobs``).

The rows go first, in one transaction (``storage.instances.delete``: tags, DICOM JSON, study
and series summaries with them); then the blobs: a crash in between leaves unused files (the
orphan sweep's), never a row pointing at nothing. ``svc.on_delete`` hooks hear the ids at once,
so the HTTP layer's read cache never answers for an instance that is gone.
"""

from collections.abc import Sequence

from . import metrics
from .service import Service
from .storage import instances
from .storage.blobs import BlobStore


async def delete_instances(svc: Service, ids: Sequence[str]) -> list[str]:
    """Delete these instances (each in its own transaction); the ids that were there and are gone."""
    gone: list[dict] = []
    for instance_id in ids:
        gone += await instances.delete(svc.db, {"id": instance_id})
    removed = [row["id"] for row in gone]
    for forget in svc.on_delete:
        forget(removed)
    if gone:
        metrics.deleted(len(gone))
        await svc.io(remove_blobs, svc.blobs, gone)
    return removed


def remove_blobs(blobs: BlobStore, gone: list[dict]) -> None:
    """After the rows are committed away: a crash in between leaves unused files, never a
    row pointing at nothing."""
    for row in gone:
        blobs.remove(row["dcm_blob"], row["png_blob"])
        blobs.remove_renderings(row["id"])
