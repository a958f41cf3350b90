"""Background imports that survive a restart.

A job is a row in ``job`` and one row per file in ``job_item``, written before
the client is answered 202; uploaded input stays in the job's spool folder
until the job is done. One runner task, owned by the app's lifespan, works
through queued jobs a chunk at a time and records each chunk's results as
they come. After a restart (or a crash) the runner picks up the items still
pending; an item that had been stored just before the crash comes back as a
duplicate, so nothing is stored twice and nothing is lost.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import shortuuid

from . import batch, store
from .batch import Entry, Item
from .errors import NotFound
from .service import Service
from .uploads import remove_spool

log = logging.getLogger("dicomsvc")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


async def submit(svc: Service, entries: Sequence[Entry], spool: Path | None) -> str:
    """Record a job for ``entries`` (its input in ``spool``, if any) and wake the runner."""
    job_id = shortuuid.uuid()
    rows = [
        (job_id, seq, e.to_json(), "pending", None)
        if isinstance(e, Item)
        else (job_id, seq, "{}", e["status"], json.dumps(e))
        for seq, e in enumerate(entries)
    ]
    async with store.transaction(svc.db) as conn:
        await conn.execute(
            "INSERT INTO job (id, status, total, spool_dir, created_at) VALUES (?, 'queued', ?, ?, ?)",
            (job_id, len(rows), str(spool) if spool else None, _now()),
        )
        await conn.executemany("INSERT INTO job_item (job_id, seq, item, status, result) VALUES (?, ?, ?, ?, ?)", rows)
    svc.wakeup.set()
    return job_id


# The results so far as one JSON array, built by SQLite (a job may hold 20,000 files:
# no Python object per result, and the internal keys are dropped on the way).
RESULTS_JSON_SQL = f"""
SELECT json_group_array(json_remove(json(result), {", ".join(f"'$.{k}'" for k in ("sop_class_uid", "sop_instance_uid"))}))
FROM (SELECT result FROM job_item WHERE job_id = ? AND status != 'pending' ORDER BY seq)
"""


async def status_json(svc: Service, job_id: str) -> bytes:
    """``GET /jobs/{id}``: progress, counts and the results so far, as JSON bytes."""
    conn = svc.db.conn
    jobs = await conn.execute_fetchall("SELECT * FROM job WHERE id = ?", (job_id,))
    if not jobs:
        raise NotFound("no job with that id")
    job = jobs[0]
    counts = dict(
        await conn.execute_fetchall(
            "SELECT status, COUNT(*) FROM job_item WHERE job_id = ? AND status != 'pending' GROUP BY status",
            (job_id,),
        )
    )
    processed = sum(counts.values())
    head = {
        "id": job_id,
        "status": job["status"],
        "total": job["total"],
        "processed": processed,
        "created": counts.get("created", 0),
        "duplicates": counts.get("duplicate", 0),
        "failed": counts.get("failed", 0),
        "skipped": counts.get("skipped", 0),
        "progress": 100 if job["total"] == 0 else processed * 100 // job["total"],
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
    } | ({"detail": job["detail"]} if job["detail"] else {})
    ((results,),) = await conn.execute_fetchall(RESULTS_JSON_SQL, (job_id,))
    return json.dumps(head)[:-1].encode() + b', "results": ' + results.encode() + b"}"


@contextlib.asynccontextmanager
async def running(svc: Service) -> AsyncIterator[None]:
    """Run queued jobs in the background for as long as the app runs."""
    await _forget_orphan_spools(svc)  # before any request can start a new one
    task = asyncio.create_task(_run_forever(svc), name="dicomsvc-jobs")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _run_forever(svc: Service) -> None:
    while True:
        svc.wakeup.clear()
        rows = await svc.db.conn.execute_fetchall(
            "SELECT id FROM job WHERE status IN ('queued', 'running') ORDER BY created_at LIMIT 1"
        )
        if not rows:
            await svc.wakeup.wait()
            continue
        try:
            await _run_job(svc, rows[0]["id"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job fails, the runner goes on
            log.error("job %s failed: %s", rows[0]["id"], type(exc).__name__)
            await _finish(svc, rows[0]["id"], "failed", f"internal error ({type(exc).__name__})")


PAGE = 512  # pending items read, run and recorded at a time: memory stays flat in the job's size


async def _run_job(svc: Service, job_id: str) -> None:
    conn = svc.db.conn
    async with store.transaction(svc.db):
        await conn.execute("UPDATE job SET status = 'running' WHERE id = ?", (job_id,))
    while pending := await conn.execute_fetchall(
        "SELECT seq, item FROM job_item WHERE job_id = ? AND status = 'pending' ORDER BY seq LIMIT ?",
        (job_id, PAGE),
    ):
        seqs = [r["seq"] for r in pending]

        async def record(start: int, results: list[dict], seqs: list[int] = seqs) -> None:
            async with store.transaction(svc.db):
                await conn.executemany(
                    "UPDATE job_item SET status = ?, result = ? WHERE job_id = ? AND seq = ?",
                    [(r["status"], json.dumps(r), job_id, seqs[start + i]) for i, r in enumerate(results)],
                )

        await batch.run(svc, [Item.from_json(r["item"]) for r in pending], on_done=record)
    await _finish(svc, job_id, "done", None)


async def _finish(svc: Service, job_id: str, state: str, detail: str | None) -> None:
    conn = svc.db.conn
    rows = await conn.execute_fetchall("SELECT spool_dir FROM job WHERE id = ?", (job_id,))
    async with store.transaction(svc.db):
        await conn.execute(
            "UPDATE job SET status = ?, detail = ?, finished_at = ?, spool_dir = NULL WHERE id = ?",
            (state, detail, _now(), job_id),
        )
    if rows and rows[0]["spool_dir"]:
        await svc.io(remove_spool, Path(rows[0]["spool_dir"]))


async def _forget_orphan_spools(svc: Service) -> None:
    """Spool folders of requests that died mid-way (no job owns them) are removed at start."""
    rows = await svc.db.conn.execute_fetchall("SELECT spool_dir FROM job WHERE spool_dir IS NOT NULL")
    keep = {Path(r["spool_dir"]) for r in rows}
    root = svc.config.spool_dir
    if root.exists():
        for folder in await svc.io(lambda: list(root.iterdir())):
            if folder not in keep:
                await svc.io(remove_spool, folder)
