"""Send jobs (``POST /dicom/send``): stored instances sent to a configured destination in the
background, each with its own outcome at ``GET /jobs/{id}``.

A send is an ordinary job (``dicomsvc.jobs``): one ``job_item`` per instance, written before
the client is answered 202, each item ``{"send": {"to", "id", "anonymize", "delete_after"}}``;
the runner hands a page of them to ``run`` instead of the ingest. ``run`` sends them in batches
of DICOMSVC_SEND_BATCH (one association or STOW-RS request each: ``sending.deliver``) and
records each batch's outcomes as they come ("sent" or "failed", with the reason). Instances
that failed transiently (destination unreachable, timed out, out of resources, HTTP 429/5xx)
are tried again, all of the page together, after an exponential backoff
(DICOMSVC_SEND_BACKOFF_SECONDS, doubled each round, at most DICOMSVC_SEND_BACKOFF_MAX_SECONDS),
DICOMSVC_SEND_RETRIES times; then they fail with the last reason. While a destination is down,
a round stops at the first batch that reached nothing (the rest of the round would not either).

After a restart the runner goes on with the items still pending: an instance sent just before
the crash, its outcome not yet recorded, is sent again -- harmless, a destination keeps one
copy of a SOP instance (``dicomsvc.sending``).

``delete_after``: once an instance's send is confirmed (C-STORE success or warning, or listed
as stored in the STOW-RS answer) and recorded, the local copy is deleted as ``DELETE /dicom/{id}``
would (``removal``); a failed one is kept. Audit: one record per instance sent or failed
(action ``send``, its id, the job, ``client`` the destination's name), one per deletion.
"""

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import replace

import shortuuid

from . import audit, removal, sending
from .errors import BadRequest, NotFound, TooLarge
from .netconfig import Destination
from .service import Service
from .storage import jobs as job_rows
from .storage import sending as send_rows
from .storage.instances import DateRange

log = logging.getLogger("dicomsvc.sending")


def is_send(item: str) -> bool:
    """Whether a job item (its JSON) is an instance to send."""
    return item.startswith('{"send"')


def destination(svc: Service, name: object) -> Destination:
    """The configured destination ``name`` (400 when it is not one: a body field, not a path)."""
    found = svc.config.network_config.destination(name) if isinstance(name, str) else None
    if found is None:
        names = ", ".join(d.name for d in svc.config.network_config.destinations) or "none configured"
        raise BadRequest(f"'to' must name a configured destination (GET /destinations: {names})")
    return found


async def select(
    svc: Service, ids: Sequence[str] | None, exact: dict[str, str] | None, study_date: DateRange | None,
    owner: str | None,
) -> list[str]:  # fmt: skip
    """The instances to send: ``ids`` (each must be stored and visible to ``owner``, else 404), or
    those matching ``exact``/``study_date`` (a study, a series, a search's filters). 404 when
    nothing is selected; 413 past DICOMSVC_SEND_MAX_INSTANCES."""
    limit = svc.config.send_max_instances
    if ids is not None:
        if len(ids) > limit:
            raise TooLarge(f"more than {limit} instances (DICOMSVC_SEND_MAX_INSTANCES)")
        unique = list(dict.fromkeys(ids))
        found = await send_rows.visible_ids(svc.db, unique, owner)
        missing = sum(1 for i in unique if i not in found)
        if missing:
            raise NotFound(f"{missing} of the ids name no stored instance")
        return unique
    chosen = await send_rows.selected_ids(svc.db, exact or {}, study_date, limit + 1, owner)
    if not chosen:
        raise NotFound("no stored instance matches: nothing to send")
    if len(chosen) > limit:
        raise TooLarge(f"more than {limit} instances match (DICOMSVC_SEND_MAX_INSTANCES): narrow the selection")
    return chosen


async def submit(svc: Service, to: Destination, ids: Sequence[str], anonymize: bool, delete_after: bool,
                 user: str | None) -> str:  # fmt: skip
    """Queue the send of ``ids`` to ``to``, asked for by ``user``: the job's id."""
    job_id = shortuuid.uuid()
    spec = {"to": to.name, "anonymize": anonymize, "delete_after": delete_after}
    items = [(seq, json.dumps({"send": {"id": i, **spec}}), "pending", None) for seq, i in enumerate(ids)]
    await job_rows.insert_job(svc.db, job_id, items, None, user)
    svc.wakeup.set()
    log.info("job %s: %d instance(s) to send to %s", job_id, len(items), to.name)
    return job_id


def backoff(config, attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): the base doubled each time, capped."""
    return min(config.send_backoff_seconds * 2 ** (attempt - 1), config.send_backoff_max_seconds)


async def run(svc: Service, job_id: str, pending: list[tuple[int, str]], owner: str | None) -> None:
    """Send a page of the job's pending items, recording each batch's outcomes under the job's
    lease (``LeaseLost`` when it is another replica's: nothing more is recorded here)."""
    specs = [(seq, json.loads(item)["send"]) for seq, item in pending]
    cfg = svc.config
    todo = specs
    attempt = 0
    while todo:
        retry: list[tuple[int, dict, sending.Outcome]] = []
        unreachable: sending.Outcome | None = None
        for start in range(0, len(todo), cfg.send_batch):
            batch = todo[start : start + cfg.send_batch]
            if unreachable is not None:  # the destination reached nothing this round: nor will these
                retry += [(seq, spec, replace(unreachable, id=spec["id"])) for seq, spec in batch]
                continue
            outcomes = await _deliver(svc, batch)
            last_round = attempt >= cfg.send_retries
            done = [(seq, spec, o) for (seq, spec), o in zip(batch, outcomes) if not o.transient or last_round]
            retry += [(seq, spec, o) for (seq, spec), o in zip(batch, outcomes) if o.transient and not last_round]
            if all(o.transient for o in outcomes) and not last_round:
                unreachable = outcomes[0]
            await _record(svc, job_id, done, owner, attempt)
        if not retry:
            return
        attempt += 1
        log.info("job %s: %d instance(s) to try again (attempt %d of %d)", job_id, len(retry), attempt + 1, cfg.send_retries + 1)
        await asyncio.sleep(backoff(cfg, attempt))
        todo = [(seq, spec) for seq, spec, _ in retry]


async def _deliver(svc: Service, batch: list[tuple[int, dict]]) -> list[sending.Outcome]:
    """One batch (its items share destination and options: one job's)."""
    spec = batch[0][1]
    to = svc.config.network_config.destination(spec["to"])
    ids = [s["id"] for _, s in batch]
    if to is None:  # the configuration changed since the job was queued
        return [sending.Outcome(i, "failed", False, "no such destination (any more)") for i in ids]
    return await sending.deliver(svc, to, ids, spec["anonymize"])


async def _record(svc: Service, job_id: str, done: list[tuple[int, dict, sending.Outcome]], owner: str | None,
                  attempt: int) -> None:  # fmt: skip
    """Record outcomes (then delete what was sent, when asked): results first, so an instance is
    never deleted without the record of its send."""
    if not done:
        return
    rows = []
    for seq, spec, o in done:
        result = {"id": o.id, "status": o.status, "detail": o.detail, "to": spec["to"]}
        if o.status == "failed" and o.transient:
            result["detail"] = f"{o.detail} (after {attempt + 1} attempts)"
        if o.status == "sent" and spec["anonymize"]:
            result["sent_uid"] = o.sent_uid  # the anonymized instance's UID: a pseudonym, found there by it
        if o.status == "sent" and spec["delete_after"]:
            result["deleted"] = True
        rows.append((seq, o.status, json.dumps(result)))
    await job_rows.record_results(svc.db, job_id, rows, svc.replica, svc.config.job_lease_seconds)
    when = audit.now()
    base = audit.Record(when, owner or "anonymous", "", "send", "JOB", None, job=job_id)
    audit.record(svc, [replace(base, instance=o.id, status=200 if o.status == "sent" else 502,
                               client=f"to:{spec['to']}") for _, spec, o in done])  # fmt: skip
    sent = sum(1 for _, _, o in done if o.status == "sent")
    log.info("job %s: %d sent, %d failed", job_id, sent, len(done) - sent)
    doomed = [o.id for _, spec, o in done if o.status == "sent" and spec["delete_after"]]
    if doomed:
        removed = await removal.delete_instances(svc, doomed)
        audit.record(svc, [replace(base, action="delete", instance=i, status=204) for i in removed])
        log.info("job %s: %d sent instance(s) deleted here", job_id, len(removed))
