"""Forwarding by routing rules (issue 14; dicomsvc/routing.py, dicomsvc/forwarding.py,
storage/forwarding.py): rules evaluated on ingest, forwards queued in the instance's own
transaction, the forwarder's batches, backoff, permanent failures, restarts, replicas.

``sending.deliver`` is replaced by a fake here (``forwarding._deliver``) except in the
Orthanc tests at the end, which need the real one and Orthanc on this machine.
"""

import asyncio
import dataclasses
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import indexdb
from app import create_app
from dicomfiles import make_ct, save
from dicomsvc import forwarding, ingest, netconfig, routing
from dicomsvc.config import Config
from dicomsvc.storage import forwarding as forward_rows
from dicomsvc.storage.sqlite import open_database

NETWORK = {
    "destinations": {
        "pacs": {"type": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
        "research": {"type": "stowrs", "url": "http://127.0.0.1:8042/dicom-web"},
    },
    "rules": [{"match": {"Modality": "CT"}, "to": "pacs"}, {"to": "research", "anonymize": True}],
}
Row = namedtuple("Row", "keyword vr value parent")


@dataclasses.dataclass(frozen=True)
class Outcome:  # sending.Outcome's shape
    id: str
    status: str
    transient: bool
    detail: str | None
    sent_uid: str | None = None


def rows(**values: str) -> list[Row]:
    vrs = {"PatientName": "PN", "ImageType": "CS", "Modality": "CS", "StudyDescription": "LO"}
    return [Row(k, vrs.get(k, "LO"), v, None) for k, v in values.items()]


def rules(*raw: dict) -> tuple[netconfig.Rule, ...]:
    names = {r["to"]: {"type": "stowrs", "url": "http://127.0.0.1:1/x"} for r in raw}
    return netconfig.parse({"destinations": names, "rules": list(raw)}).rules


# Rule evaluation -------------------------------------------------------------------------------


def test_every_matching_rule_applies_in_order_with_its_anonymize_flag():
    net = netconfig.parse(NETWORK)
    assert routing.forwards(net.rules, rows(Modality="CT")) == [("pacs", False), ("research", True)]
    assert routing.forwards(net.rules, rows(Modality="MR")) == [("research", True)]
    assert routing.forwards(net.rules, []) == [("research", True)]  # no Modality: only the catch-all
    assert routing.forwards((), rows(Modality="CT")) == []


def test_match_keys_are_matched_as_c_find_does():
    """PS3.4 C.2.2.2: single value, * and ? wild cards, PN without regard to case, any of several values."""
    r = rules({"match": {"Modality": "C?"}, "to": "a"}, {"match": {"StudyDescription": "*head*"}, "to": "b"},
              {"match": {"PatientName": "doe^*"}, "to": "c"}, {"match": {"ImageType": "PRIMARY"}, "to": "d"},
              {"match": {"Modality": "CT", "StudyDescription": "Chest"}, "to": "e"},
              {"match": {"InstitutionName": "*"}, "to": "f"}, {"match": {"InstitutionName": "X"}, "to": "g"})  # fmt: skip
    got = routing.forwards(r, rows(Modality="CT", StudyDescription="CT head", PatientName="DOE^JANE",
                                   ImageType="ORIGINAL\\PRIMARY\\AXIAL"))  # fmt: skip
    assert [d for d, _ in got] == ["a", "b", "c", "d", "f"]
    got = routing.forwards(r, rows(Modality="CTX", StudyDescription="Chest", PatientName="Roe^Doe"))
    assert [d for d, _ in got] == ["f"]  # CTX is not C?; case matters outside PN; ImageType absent
    assert [d for d, _ in routing.forwards(r, rows(Modality="CT", StudyDescription="Chest"))] == ["a", "e", "f"]
    nested = [Row("Modality", "CS", "CT", 3)]  # inside a sequence item: not the instance's own
    assert [d for d, _ in routing.forwards(r, nested)] == ["f"]


def test_a_pair_named_twice_is_queued_once():
    r = rules({"match": {"Modality": "CT"}, "to": "a"}, {"to": "a"}, {"to": "a", "anonymize": True})
    assert routing.forwards(r, rows(Modality="CT")) == [("a", False), ("a", True)]


def test_backoff_doubles_up_to_its_cap(config):
    config = dataclasses.replace(config, forward_backoff_seconds=5, forward_max_backoff_seconds=600)
    assert [forwarding.backoff(config, n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert forwarding.backoff(config, 10_000) == 600


# The queue, with the instance ---------------------------------------------------------------


def routed(config: Config, **settings) -> Config:
    fast = {"forward_backoff_seconds": 0.05, "forward_max_backoff_seconds": 0.2, "forward_poll_seconds": 0.2}
    return dataclasses.replace(config, network_config=netconfig.parse(NETWORK), **(fast | settings))


def forwards_of(config: Config) -> list[tuple]:
    with indexdb.index(config) as db:
        return db.execute(
            "SELECT instance_id, destination, anonymize, state, attempts, last_detail FROM forward "
            "ORDER BY instance_id, destination"
        ).fetchall()


def ct_and_mr(import_root: Path) -> tuple[str, str]:
    save(make_ct(Modality="CT"), import_root / "ct.dcm")
    save(make_ct(Modality="MR"), import_root / "mr.dcm")
    return "ct.dcm", "mr.dcm"


class Fake:
    """``sending.deliver``'s stand-in: records calls; ``answer(call number, id)`` says the outcome."""

    def __init__(self, answer=None):
        self.calls: list[tuple[str, tuple[str, ...], bool]] = []
        self.answer = answer or (lambda n, i: Outcome(i, "sent", False, None))
        self.lock = threading.Lock()

    async def __call__(self, svc, destination, ids, anonymize):
        with self.lock:
            self.calls.append((destination.name, tuple(ids), anonymize))
            n = len(self.calls)
        return [self.answer(n, i) for i in ids]

    def sent(self) -> list[tuple[str, str, bool]]:
        return sorted((d, i, a) for d, ids, a in self.calls for i in ids)


def eventually(check, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, "not within the liveness bound"
        time.sleep(0.05)
    return value


def test_forwards_are_queued_with_the_instance_and_duplicates_queue_nothing(config, import_root, monkeypatch):
    config = routed(config)
    hold = asyncio.Event()

    async def never(svc, destination, ids, anonymize):  # nothing leaves: the queue is looked at as it is
        await hold.wait()

    monkeypatch.setattr(forwarding, "_deliver", never)
    ct, mr = ct_and_mr(import_root)
    with TestClient(create_app(config)) as client:
        ct_id = client.post("/dicom", json={"path": ct}).json()["id"]
        mr_id = client.post("/dicom", json={"path": mr}).json()["id"]
        assert client.post("/dicom", json={"path": ct}).status_code == 200  # a duplicate
        got = forwards_of(config)
        assert sorted((i, d, a, s) for i, d, a, s, _, _ in got) == sorted(
            [(ct_id, "pacs", 0, "queued"), (ct_id, "research", 1, "queued"), (mr_id, "research", 1, "queued")]
        )
        # deleting an instance deletes its forwards: nothing is sent of what is no longer stored
        assert client.delete(f"/dicom/{ct_id}").status_code in (200, 204)
        assert [(i, d) for i, d, *_ in forwards_of(config)] == [(mr_id, "research")]


def test_a_zip_batch_queues_each_new_instance_once(config, import_root, monkeypatch):
    """A ZIP's files commit in one transaction (insert_instances): each new one's forwards with it,
    none for a copy of one already in the batch."""
    from test_intake import make_zip, post_zip, wait_for

    config = routed(config)
    monkeypatch.setattr(forwarding, "_deliver", Fake(lambda n, i: Outcome(i, "failed", True, "connection refused")))
    config = dataclasses.replace(config, forward_backoff_seconds=3600, forward_max_backoff_seconds=3600)
    ct, mr = (save(make_ct(Modality=m), import_root / f"{m}.dcm").read_bytes() for m in ("CT", "MR"))
    with TestClient(create_app(config)) as client:
        answer = post_zip(client, make_zip({"a/ct.dcm": ct, "a/again.dcm": ct, "a/mr.dcm": mr}))
        assert answer.status_code in (200, 201, 202), answer.text
        if answer.status_code == 202:
            wait_for(client, answer.json()["status_url"])
    got = forwards_of(config)
    with indexdb.index(config) as db:
        modality = dict(db.execute("SELECT id, modality FROM dicom").fetchall())
    assert sorted((modality[i], d, a) for i, d, a, *_ in got) == [("CT", "pacs", 0), ("CT", "research", 1), ("MR", "research", 1)]


def test_an_instance_received_over_c_store_is_forwarded_by_the_rules(config, tmp_path, monkeypatch):
    """DIMSE C-STORE into our SCP: its Success comes after the commit that queued the forwards."""
    from test_dimse import free_port, send_raw

    config = dataclasses.replace(
        routed(config),
        dimse_port=free_port(), network_config=netconfig.parse(NETWORK | {"peers": [{"ae_title": "PYNETDICOM"}]}),
    )  # fmt: skip
    fake = Fake()
    monkeypatch.setattr(forwarding, "_deliver", fake)
    path = save(make_ct(Modality="CT"), tmp_path / "ct.dcm")
    with TestClient(create_app(config)) as client:
        assert send_raw(config, path) == 0x0000
        (instance_id,) = [i["id"] for i in client.get("/dicom").json()["items"]]
        assert {(i, d) for i, d, *_ in forwards_of(config)} == {(instance_id, "pacs"), (instance_id, "research")}
        eventually(lambda: len(fake.sent()) == 2)
    assert fake.sent() == [("pacs", instance_id, False), ("research", instance_id, True)]


def test_an_instance_whose_forwards_cannot_be_queued_is_not_stored(config, import_root, monkeypatch):
    """One transaction: there is no moment when the instance is committed and its forwards are not."""
    config = routed(config)
    ct, _ = ct_and_mr(import_root)
    with TestClient(create_app(config)):
        pass  # the schema

    def broken(*args):
        raise RuntimeError("the queue's insert failed")

    monkeypatch.setattr(forward_rows, "queue", broken)
    with pytest.raises(RuntimeError):
        ingest.ingest_import(config, ct)
    with indexdb.index(config) as db:
        assert db.execute("SELECT COUNT(*) FROM dicom").fetchone()[0] == 0
    monkeypatch.undo()
    done = ingest.ingest_import(config, ct)
    assert done.created and [(i, d) for i, d, *_ in forwards_of(config)] == [(done.id, "pacs"), (done.id, "research")]


# The forwarder -------------------------------------------------------------------------------


def test_an_outage_delays_delivery_and_loses_nothing(config, import_root, monkeypatch):
    """The first four deliveries fail transiently (destination down); then everything arrives, each once."""
    config = routed(config)
    fake = Fake(lambda n, i: Outcome(i, "failed", True, "connection refused") if n <= 4
                else Outcome(i, "sent", False, None))  # fmt: skip
    monkeypatch.setattr(forwarding, "_deliver", fake)
    ct, mr = ct_and_mr(import_root)
    with TestClient(create_app(config)) as client:
        ct_id = client.post("/dicom", json={"path": ct}).json()["id"]
        mr_id = client.post("/dicom", json={"path": mr}).json()["id"]
        eventually(lambda: all(s == "sent" for *_, s, _, _ in forwards_of(config)) and len(forwards_of(config)) == 3)
        status = client.get("/forwarding").json()
    delivered = [(d, i, a) for d, ids, a in fake.calls[4:] for i in ids]
    assert sorted(delivered) == sorted([("pacs", ct_id, False), ("research", ct_id, True), ("research", mr_id, True)])
    assert all(attempts >= 2 for *_, attempts, _ in forwards_of(config))  # each failed at least once first
    research = next(d for d in status["destinations"] if d["name"] == "research")
    assert (research["queued"], research["sent"], research["failed"]) == (0, 2, 0)


def test_a_destination_down_is_tried_once_per_backoff_not_once_per_batch(config, import_root, monkeypatch):
    """Batches of one, four MRs queued for research, research down: one attempt, and the other
    three rows wait the same backoff instead of each being tried in turn."""
    config = routed(config, forward_batch=1, forward_backoff_seconds=3600, forward_max_backoff_seconds=3600)
    fake = Fake(lambda n, i: Outcome(i, "failed", True, "connection refused"))
    monkeypatch.setattr(forwarding, "_deliver", fake)
    for n in range(4):
        save(make_ct(Modality="MR"), import_root / f"{n}.dcm")
    with TestClient(create_app(config)):  # the index made, then the app stopped
        pass
    for n in range(4):  # queued before the forwarder starts: all four due at once (queued while it
        ingest.ingest_import(config, f"{n}.dcm")  # ran, any task's wake-up could take the first alone)
    with TestClient(create_app(dataclasses.replace(config, forward_poll_seconds=3600))) as client:
        eventually(lambda: fake.calls)  # its first look at start finds them
        time.sleep(0.5)
        status = client.get("/forwarding").json()
    assert len(fake.calls) == 1
    assert sorted(n for *_, n, _ in forwards_of(config)) == [0, 0, 0, 1]  # the others were not tried
    assert next(d for d in status["destinations"] if d["name"] == "research")["queued"] == 4


def test_a_permanent_failure_is_recorded_with_its_reason(config, import_root, monkeypatch):
    config = routed(config)
    refused = "refused: C-STORE status 0xA900 (data set does not match SOP class)"
    fake = Fake(lambda n, i: Outcome(i, "failed", False, refused))
    monkeypatch.setattr(forwarding, "_deliver", fake)
    _, mr = ct_and_mr(import_root)
    with TestClient(create_app(config)) as client:
        mr_id = client.post("/dicom", json={"path": mr}).json()["id"]
        eventually(lambda: forwards_of(config)[0][3] == "failed")
        time.sleep(0.5)  # a few polls: a failed forward is not tried again
        status = client.get("/forwarding").json()
        metrics = client.get("/metrics").text
    assert forwards_of(config) == [(mr_id, "research", 1, "failed", 1, refused)]
    assert len(fake.calls) == 1
    research = next(d for d in status["destinations"] if d["name"] == "research")
    assert research["failed"] == 1 and research["last_error"]["detail"] == refused
    assert status["rules"] == [{"match": ["Modality"], "to": "pacs", "anonymize": False},
                               {"match": [], "to": "research", "anonymize": True}]  # fmt: skip
    assert 'dicomsvc_forwards_total{destination="research",outcome="failed"}' in metrics
    assert 'dicomsvc_forward_queue{destination="pacs"} 0.0' in metrics


def test_forwards_queued_at_a_stop_are_sent_after_the_restart(config, import_root, monkeypatch):
    config = routed(config, forward_lease_seconds=1)
    started = threading.Event()

    async def stuck(svc, destination, ids, anonymize):  # the destination hangs until the app stops
        started.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(forwarding, "_deliver", stuck)
    ct, mr = ct_and_mr(import_root)
    with TestClient(create_app(config)) as client:
        ids = {client.post("/dicom", json={"path": p}).json()["id"] for p in (ct, mr)}
        assert started.wait(30)
    assert {s for *_, s, _, _ in forwards_of(config)} == {"queued"}
    fake = Fake()
    monkeypatch.setattr(forwarding, "_deliver", fake)
    with TestClient(create_app(config)):
        eventually(lambda: {s for *_, s, _, _ in forwards_of(config)} == {"sent"}, 60)
    assert {i for _, i, _ in fake.sent()} == ids and len(fake.sent()) == 3


def test_sent_forwards_are_forgotten_after_the_keep_period(config, import_root, monkeypatch):
    config = routed(config, forward_keep_seconds=3600)
    fake = Fake(lambda n, i: Outcome(i, "sent", False, None) if n == 1 else Outcome(i, "failed", False, "refused"))
    monkeypatch.setattr(forwarding, "_deliver", fake)
    ct, _ = ct_and_mr(import_root)  # a CT: to pacs and to research, one sent and the other refused
    with TestClient(create_app(config)) as client:
        ct_id = client.post("/dicom", json={"path": ct}).json()["id"]
        eventually(lambda: sorted(s for *_, s, _, _ in forwards_of(config)) == ["failed", "sent"])
    with TestClient(create_app(config)):  # a restart within the keep period forgets nothing
        pass
    assert len(forwards_of(config)) == 2
    with indexdb.index(config) as db:  # sent two hours ago (both rows: a failed one has no sent_at)
        db.execute("UPDATE forward SET sent_at = sent_at - 7200 WHERE state = 'sent'")
    with TestClient(create_app(config)) as client:  # pruned at start
        eventually(lambda: len(forwards_of(config)) == 1)
        status = {d["name"]: d for d in client.get("/forwarding").json()["destinations"]}
    ((instance, _, _, state, _, _),) = forwards_of(config)
    assert (instance, state) == (ct_id, "failed")  # the failed one stays
    assert sum(d["sent"] for d in status.values()) == 0 and sum(d["failed"] for d in status.values()) == 1


def test_a_destination_no_longer_configured_fails_its_forwards(config, import_root, monkeypatch):
    config = routed(config)
    monkeypatch.setattr(forwarding, "_deliver", Fake())
    _, mr = ct_and_mr(import_root)
    with TestClient(create_app(dataclasses.replace(config, forward_poll_seconds=3600))) as client:
        client.post("/dicom", json={"path": mr})
        eventually(lambda: forwards_of(config)[0][3] == "sent")
    # the same instance's research forward again, as if queued under an older configuration
    with indexdb.index(config) as db:
        db.execute("UPDATE forward SET state = 'queued', destination = 'old'")
    fake = Fake()
    monkeypatch.setattr(forwarding, "_deliver", fake)
    with TestClient(create_app(config)) as client:
        eventually(lambda: forwards_of(config)[0][3] == "failed")
        entry = next(d for d in client.get("/forwarding").json()["destinations"] if d["name"] == "old")
    assert fake.calls == [] and entry["configured"] is False and entry["last_error"]["detail"] == forwarding.GONE


def test_two_replicas_never_claim_the_same_forward(config, import_root):
    """Two services on one index claiming at once (PostgreSQL: SKIP LOCKED; SQLite: one writer)."""
    config = routed(config)
    with TestClient(create_app(dataclasses.replace(config, network_config=netconfig.NetworkConfig()))):
        pass  # the schema, no forwarder
    for n in range(12):
        save(make_ct(Modality="CT"), import_root / f"{n}.dcm")
        ingest.ingest_import(config, f"{n}.dcm")  # 12 x (pacs, research)

    async def both() -> list[list]:
        one, two = await open_database(config.database), await open_database(config.database)
        try:
            claims: list[list] = [[], []]

            async def replica(db, name, into):
                while (got := await forward_rows.claim(db, name, 60, 5)) is not None and got[2]:
                    into.extend((got[0], c.id) for c in got[2])

            await asyncio.gather(replica(one, "a", claims[0]), replica(two, "b", claims[1]))
            return claims
        finally:
            await one.close()
            await two.close()

    a, b = asyncio.run(both())
    assert not set(a) & set(b) and len(a) + len(b) == 24
    # a claimed row is not due for anyone until its lease runs out; a recorded one never again
    assert asyncio.run(_claim_once(config, "c")) is None


@pytest.mark.postgres_only
def test_two_replicas_forwarding_from_one_index_send_each_forward_once(tmp_path, import_root, monkeypatch):
    """Two apps (replicas) on one PostgreSQL, both forwarders running, small batches: every
    forward is delivered once, whichever replica claimed it."""
    url = indexdb.database_env(tmp_path / "a")["DICOMSVC_DATABASE_URL"]
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        plain = Config.from_env({"DICOMSVC_DATA_DIR": str(tmp_path / name), "DICOMSVC_IMPORT_ROOT": str(import_root),
                                 "DICOMSVC_WORKERS": "0", "DICOMSVC_DATABASE_URL": url})  # fmt: skip
        configs.append(routed(plain, forward_batch=3, forward_poll_seconds=0.05))
    delivered: list[tuple[str, str, str, bool]] = []
    first: list[str] = []

    async def deliver(svc, destination, ids, anonymize):
        if not first:  # the first batch is held until the other replica has sent one of its own
            first.append(svc.replica)
            deadline = time.monotonic() + 30
            while not any(r != svc.replica for r, *_ in delivered) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        delivered.extend((svc.replica, destination.name, i, anonymize) for i in ids)
        return [Outcome(i, "sent", False, None) for i in ids]

    monkeypatch.setattr(forwarding, "_deliver", deliver)
    for n in range(15):
        save(make_ct(Modality="CT"), import_root / f"{n}.dcm")
    with TestClient(create_app(configs[0])) as a, TestClient(create_app(configs[1])):
        ids = [a.post("/dicom", json={"path": f"{n}.dcm"}).json()["id"] for n in range(15)]
        eventually(lambda: all_sent(configs[0], 30), 60)
    assert len({r for r, *_ in delivered}) == 2  # both replicas sent, side by side
    sent = sorted((d, i, anon) for _, d, i, anon in delivered)
    assert sent == sorted([("pacs", i, False) for i in ids] + [("research", i, True) for i in ids])  # each once


async def _claim_once(config: Config, replica: str):
    db = await open_database(config.database)
    try:
        return await forward_rows.claim(db, replica, 60, 5)
    finally:
        await db.close()



# With Orthanc (Debian's, with its DICOMweb plugin) and the real sending.deliver ------------------

MARKER = "PLANTEDMARKER"


def orthanc_config(tmp_path: Path, destinations: dict, rules_: list[dict]) -> Config:
    from test_sending import send_config

    fast = {"DICOMSVC_FORWARD_BACKOFF_SECONDS": "1", "DICOMSVC_FORWARD_MAX_BACKOFF_SECONDS": "2",
            "DICOMSVC_FORWARD_POLL_SECONDS": "1"}  # fmt: skip
    network = netconfig.parse({"destinations": destinations, "rules": rules_})
    return dataclasses.replace(send_config(tmp_path, destinations, **fast), network_config=network)


def planted(tmp_path: Path, modality: str) -> tuple[bytes, str]:
    """A file with the marker in patient attributes, and its SOP Instance UID."""
    ds = make_ct(Modality=modality, PatientName=f"{MARKER}^Jane", PatientID=f"{MARKER}-1",
                 InstitutionName=f"{MARKER} hospital")  # fmt: skip
    return save(ds, tmp_path / "made" / f"{modality}.dcm").read_bytes(), str(ds.SOPInstanceUID)


def post(client, body: bytes) -> str:
    answer = client.post("/dicom", content=body, headers={"content-type": "application/dicom"})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def all_sent(config: Config, n: int) -> bool:
    got = forwards_of(config)
    return len(got) == n and all(s == "sent" for *_, s, _, _ in got)


def test_ct_to_the_pacs_and_everything_anonymized_to_research(tmp_path):
    """The issue's example against two Orthancs: A over C-STORE, B over STOW-RS (anonymized)."""
    from test_sending import Orthanc

    a = Orthanc(tmp_path / "orthanc-a").start()
    try:
        b = Orthanc(tmp_path / "orthanc-b").start()
        try:
            destinations = {"pacs": a.destinations()["pacs"], "research": b.destinations()["web"]}
            config = orthanc_config(tmp_path, destinations, NETWORK["rules"])
            (ct, ct_uid), (mr, mr_uid) = planted(tmp_path, "CT"), planted(tmp_path, "MR")
            with TestClient(create_app(config)) as client:
                post(client, ct), post(client, mr)
                eventually(lambda: all_sent(config, 3), 120)
            assert a.sop_uids() == [ct_uid]  # only the CT, once, as it was
            held = b.tags()
            assert len(held) == 2 and {t["Modality"] for t in held} == {"CT", "MR"}  # both, once each
            assert not {t["SOPInstanceUID"] for t in held} & {ct_uid, mr_uid}  # the anonymized copies
            with b.rest() as rest:
                for i in rest.get("/instances").json():
                    assert MARKER.encode() not in rest.get(f"/instances/{i}/file").content
        finally:
            b.stop()
    finally:
        a.stop()


def test_an_orthanc_down_at_first_receives_everything_once_it_is_up(tmp_path):
    """Forwards over C-STORE and STOW-RS to an Orthanc not yet started fail transiently, are
    retried with backoff, and all arrive once it is: each instance once (as itself over C-STORE,
    anonymized over STOW-RS)."""
    from test_sending import Orthanc

    server = Orthanc(tmp_path / "orthanc")  # its ports chosen, not started
    rules_ = [{"match": {"Modality": "CT"}, "to": "pacs"}, {"to": "web", "anonymize": True}]
    config = orthanc_config(tmp_path, server.destinations(), rules_)
    files = [planted(tmp_path, m) for m in ("CT", "MR")]
    try:
        with TestClient(create_app(config)) as client:
            for body, _ in files:
                post(client, body)
            eventually(lambda: len(forwards_of(config)) == 3 and all(n >= 2 for *_, n, _ in forwards_of(config)), 60)
            assert {s for *_, s, _, _ in forwards_of(config)} == {"queued"}
            down = client.get("/forwarding").json()
            server.start()
            eventually(lambda: all_sent(config, 3), 120)
        assert all(d["last_error"] for d in down["destinations"])  # the outage, seen
        held = server.tags()
        assert len(held) == 3  # the CT as itself, the CT and the MR anonymized: nothing twice
        assert sorted(t["SOPInstanceUID"] for t in held if MARKER in t.get("PatientName", "")) == [files[0][1]]
        assert sorted(t["Modality"] for t in held if MARKER not in t.get("PatientName", "")) == ["CT", "MR"]
    finally:
        server.stop()
