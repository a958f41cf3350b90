"""Forwarding by routing rules (issue 14; README "Routing rules"): the persistent queue's sender.

An ingest that stores a new instance evaluates the rules of DICOMSVC_NETWORK_CONFIG
(``dicomsvc.routing``, in the worker) and queues one ``forward`` row per (destination,
anonymize) in the instance's own transaction (``storage.forwarding.queue``): a 201, a C-STORE
Success, a job's "created" all imply the forwards are queued, crash or not; a duplicate
queues nothing again. Deleting the instance deletes its rows (ON DELETE CASCADE): what is
no longer stored is not sent.

The forwarder (one task in the app's lifespan, beside the job runner) claims due rows in
batches of DICOMSVC_FORWARD_BATCH of one (destination, anonymize) group, under a lease of
DICOMSVC_FORWARD_LEASE_SECONDS renewed while they are sent (``storage.forwarding.claim``: SKIP
LOCKED on PostgreSQL, so replicas share the queue without sending a row twice), and hands them
to ``sending.deliver`` (one association or STOW-RS request). Destinations are sent to side by
side, one batch each at a time. Each row's outcome is recorded: sent; a transient failure is
retried after an exponential backoff (DICOMSVC_FORWARD_BACKOFF_SECONDS, doubled per failed
attempt, at most DICOMSVC_FORWARD_MAX_BACKOFF_SECONDS), for ever: an outage delays and loses
nothing; a permanent one (the destination refuses the instance) is marked failed with its
reason. A batch that failed transiently as a whole (the destination is down) puts off that
destination's other queued rows as long: one try per backoff period, however long the queue,
not one per batch. A row whose destination left the configuration fails so. The forwarder wakes after
each worker task (an ingest may have queued rows), when a batch ends, when a retry falls due,
and otherwise every DICOMSVC_FORWARD_POLL_SECONDS (rows queued by another replica).

Sent rows are forgotten after DICOMSVC_FORWARD_KEEP_SECONDS (at start, then hourly).

Delivery is at least once: a replica that dies mid-batch (or stalls past its lease) leaves
rows another replica sends again. A re-sent instance is the same SOP Instance (for an
anonymized copy, the same pseudonymous UIDs), which a PACS stores once.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from . import metrics
from .jobs import _stopping
from .netconfig import Destination
from .service import Service, in_background
from .storage import forwarding as rows

log = logging.getLogger("dicomsvc")
GONE = "the destination is no longer configured"
PRUNE_EVERY = 3600.0  # seconds between prunings of sent forwards (and once at start)


async def _deliver(svc: Service, destination: Destination, ids: Sequence[str], anonymize: bool) -> list:
    """``sending.deliver``: one Outcome (id, status sent|failed, transient, detail) per id."""
    from . import sending  # pynetdicom (a DIMSE destination) loads with the first forward only

    return await sending.deliver(svc, destination, ids, anonymize)


def backoff(config, attempts: int) -> float:
    """Seconds to wait after a row's ``attempts``-th failed attempt: the first wait doubled
    with each failure, capped (exponential backoff)."""
    return float(min(config.forward_backoff_seconds * 2 ** min(attempts - 1, 40), config.forward_max_backoff_seconds))


@contextlib.asynccontextmanager
async def running(svc: Service) -> AsyncIterator[None]:
    """Send queued forwards in the background for as long as the app runs (with destinations)."""
    if not svc.config.network_config.destinations:
        yield
        return
    if voided := await rows.void_claims(svc.db):
        log.info("resuming %d forward(s) the previous process was sending", voided)
    async with in_background(_run_forever(svc), "dicomsvc-forwarding"):
        yield


async def _run_forever(svc: Service) -> None:
    config = svc.config
    busy: dict[str, asyncio.Task] = {}  # destination -> the batch being sent to it

    def done(task: asyncio.Task, destination: str) -> None:
        busy.pop(destination, None)
        svc.forward_wakeup.set()

    pruned_at = float("-inf")
    try:
        while True:
            svc.forward_wakeup.clear()
            if config.forward_keep_seconds and time.monotonic() - pruned_at > PRUNE_EVERY:
                pruned_at = time.monotonic()
                await _prune(svc)
            claimed = None
            try:
                claimed = await rows.claim(svc.db, svc.replica, config.forward_lease_seconds, config.forward_batch, tuple(busy))
            except Exception as exc:  # the database away for a moment: look again at the next poll
                _stopping(exc)
                log.error("could not look for queued forwards: %s", type(exc).__name__)
            if claimed is not None and claimed[2]:
                destination, anonymize, batch = claimed
                task = asyncio.create_task(_send(svc, destination, anonymize, batch), name=f"dicomsvc-forward-{destination}")
                busy[destination] = task
                task.add_done_callback(lambda t, d=destination: done(t, d))
                continue
            timeout = float(config.forward_poll_seconds)
            try:
                wait = await rows.wait_seconds(svc.db)
            except Exception as exc:
                _stopping(exc)
                wait = None
            if wait is not None and wait > 0:
                timeout = min(timeout, wait)
            elif wait is not None and not busy:  # due, yet not claimed: another replica's claim under way
                timeout = min(timeout, 1.0)
            # asyncio.timeout, not wait_for (jobs._run_forever: wait_for can drop a cancellation)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await svc.forward_wakeup.wait()
    finally:
        for task in list(busy.values()):
            task.cancel()
        await asyncio.gather(*busy.values(), return_exceptions=True)


async def _prune(svc: Service) -> None:
    """Forget forwards sent more than DICOMSVC_FORWARD_KEEP_SECONDS ago (the table stays the size
    of the recent traffic); queued and failed ones stay until they are sent or their instance goes."""
    try:
        if gone := await rows.prune(svc.db, svc.config.forward_keep_seconds):
            log.info("forgot %d forward(s) sent more than %d s ago", gone, svc.config.forward_keep_seconds)
    except Exception as exc:  # the database away for a moment: next time
        _stopping(exc)
        log.error("could not prune sent forwards: %s", type(exc).__name__)


async def _send(svc: Service, name: str, anonymize: bool, batch: list[rows.Claimed]) -> None:
    """Deliver one claimed batch and record each row's outcome (under the lease, renewed meanwhile)."""
    destination = svc.config.network_config.destination(name)
    sent: list[int] = []
    retry: list[tuple[int, float, str | None]] = []
    failed: list[tuple[int, str | None]] = []
    if destination is None:
        failed = [(c.id, GONE) for c in batch]
    else:
        renewal = asyncio.create_task(_renew(svc, [c.id for c in batch]))
        try:
            outcomes = await _deliver(svc, destination, [c.instance_id for c in batch], anonymize)
            problem = "no outcome for the instance"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # sending's contract is to answer, never raise: retried as transient
            _stopping(exc)
            log.error("forwarding to %s failed: %s", name, type(exc).__name__)
            outcomes, problem = [], f"internal error ({type(exc).__name__})"
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        by_id = {o.id: o for o in outcomes}
        for c in batch:
            outcome = by_id.get(c.instance_id)
            if outcome is not None and outcome.status == "sent":
                sent.append(c.id)
            elif outcome is None or outcome.transient:
                retry.append((c.id, backoff(svc.config, c.attempts + 1), outcome.detail if outcome else problem))
            else:
                failed.append((c.id, outcome.detail))
    try:
        await rows.record(svc.db, svc.replica, sent, retry, failed)
        if retry and not sent and not failed:  # the destination is down: its other rows wait as long
            await rows.hold(svc.db, name, max(delay for _, delay, _ in retry))
    except Exception as exc:  # unrecorded: the rows are sent again once their lease runs out
        _stopping(exc)
        log.error("forwards to %s could not be recorded: %s", name, type(exc).__name__)
        return
    metrics.forwarded(name, len(sent), len(retry), len(failed))
    if retry or failed:
        log.warning("forwarding to %s: %d sent, %d to retry, %d failed", name, len(sent), len(retry), len(failed))
    else:
        log.info("forwarded %d instance(s) to %s", len(sent), name)


async def _renew(svc: Service, ids: list[int]) -> None:
    """Renew the batch's lease every third of it while it is being sent."""
    lease = svc.config.forward_lease_seconds
    while True:
        await asyncio.sleep(lease / 3)
        try:
            await rows.renew(svc.db, ids, svc.replica, lease)
        except Exception as exc:  # the database away for a moment: the lease may well hold still
            _stopping(exc)
            log.error("could not renew the lease of forwards being sent: %s", type(exc).__name__)


async def status(svc: Service) -> dict:
    """GET /forwarding: per destination, forwards by state, the oldest queued one's age, the
    last failure's detail (no patient data: sending's details name codes and statuses)."""
    found = await rows.summary(svc.db)
    names = [d.name for d in svc.config.network_config.destinations]
    names += sorted(set(found) - set(names))  # rows left for destinations no longer configured
    out = []
    for name in names:
        entry = found.get(name, {"counts": {}, "oldest_queued_seconds": None, "last_error": None})
        counts = entry["counts"]
        out.append({
            "name": name,
            "configured": name in {d.name for d in svc.config.network_config.destinations},
            "queued": counts.get("queued", 0), "sent": counts.get("sent", 0), "failed": counts.get("failed", 0),
            "oldest_queued_seconds": entry["oldest_queued_seconds"],
            "last_error": entry["last_error"],
        })  # fmt: skip
    # the rules' match keys, not their values (a rule could name a patient)
    rules = [{"match": [k for k, _ in r.match], "to": r.to, "anonymize": r.anonymize} for r in svc.config.network_config.rules]
    return {"destinations": out, "rules": rules}


async def queue_depths(svc: Service) -> dict[str, int]:
    """Forwards queued per destination (every configured one, 0 when none): the metrics' gauge."""
    counts = await rows.queued_counts(svc.db)
    return {d.name: 0 for d in svc.config.network_config.destinations} | counts
