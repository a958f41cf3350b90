"""Sending (dicomsvc/sending.py, POST /dicom/send): stored instances to Orthanc (Debian's) over
C-STORE and over STOW-RS (its orthanc-dicomweb plugin), checked through Orthanc's REST API; the
C-STORE status and STOW-RS answer mapping as unit tests.
"""

import asyncio
import concurrent.futures
import contextlib
import io
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from app import create_app
from dicomfiles import make_ct, sample_file, save
from dicomsvc import sending
from dicomsvc.config import Config
from dicomsvc.netconfig import Destination

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
try:
    import servers
finally:
    sys.path.pop(0)

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_or_skip() -> str:
    """Orthanc's binary and its DICOMweb plugin: missing, these tests skip, except in CI (.ci/run
    installs orthanc and orthanc-dicomweb), where they fail."""
    binary = servers.orthanc_binary()
    missing = "orthanc" if binary is None else "orthanc-dicomweb" if not DICOMWEB_PLUGIN.exists() else None
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} is not installed (.ci/run installs Debian's orthanc and orthanc-dicomweb)")
        pytest.skip(f"{missing} is not installed")
    return binary


class Orthanc:
    """Orthanc with its DICOM server (AE ORTHANC) and the DICOMweb plugin, on free loopback ports."""

    def __init__(self, work: Path, dicom_port: int | None = None, **extra):
        self.binary = orthanc_or_skip()
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.http_port = servers.free_port()
        self.dicom_port = dicom_port or servers.free_port()
        path = servers.write_orthanc_config(work, self.http_port, name="sending")
        cfg = json.loads(path.read_text())
        cfg |= {"DicomServerEnabled": True, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
                "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
                "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}  # fmt: skip
        path.write_text(json.dumps(cfg | extra))
        self.cfg_path = path
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.proc = None

    def start(self) -> "Orthanc":
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME")}
        self.proc, _ = servers.launch("orthanc", [self.binary, str(self.cfg_path)], self.work, env,
                                      self.work / "orthanc.log", self.base + "/system")  # fmt: skip
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def rest(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60, trust_env=False)

    def clear(self) -> None:
        with self.rest() as rest:
            for study in rest.get("/studies").json():
                rest.delete(f"/studies/{study}")

    def sop_uids(self) -> list[str]:
        """The SOP Instance UIDs of every instance Orthanc holds (one per stored instance)."""
        with self.rest() as rest:
            return sorted(rest.get(f"/instances/{i}/simplified-tags").json()["SOPInstanceUID"]
                          for i in rest.get("/instances").json())  # fmt: skip

    def tags(self) -> list[dict]:
        with self.rest() as rest:
            return [rest.get(f"/instances/{i}/simplified-tags").json() for i in rest.get("/instances").json()]

    def destinations(self) -> dict:
        return {
            "pacs": {"type": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": self.dicom_port},
            "web": {"type": "stowrs", "url": f"{self.base}/dicom-web"},
        }


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        yield server
    finally:
        server.stop()


def send_config(tmp_path: Path, destinations: dict, **env: str) -> Config:
    network = tmp_path / "network.json"
    network.write_text(json.dumps({"peers": [], "destinations": destinations, "rules": []}))
    return Config.from_env(
        {
            "DICOMSVC_DATA_DIR": str(tmp_path / "data"),
            "DICOMSVC_IMPORT_ROOT": str(tmp_path / "import"),
            "DICOMSVC_WORKERS": "0",
            "DICOMSVC_NETWORK_CONFIG": str(network),
            "DICOMSVC_SEND_BACKOFF_SECONDS": "0",
        }
        | env
    )


def study_files(tmp_path: Path, series: int = 2, per_series: int = 3, **tags) -> list[Path]:
    study = generate_uid()
    files = []
    for s in range(series):
        uid = generate_uid()
        for i in range(per_series):
            ds = make_ct(StudyInstanceUID=study, SeriesInstanceUID=uid, SeriesNumber=s + 1, InstanceNumber=i + 1, **tags)
            files.append(save(ds, tmp_path / "made" / f"{study[-8:]}-{s}-{i}.dcm"))
    return files


def upload(client, files: list[Path]) -> list[str]:
    ids = []
    for path in files:
        answer = client.post("/dicom", content=path.read_bytes(), headers={"content-type": "application/dicom"})
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


def uids_of(files: list[Path]) -> list[str]:
    return sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files)


# deliver -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pacs", "web"])
def test_deliver_stores_the_instances_at_orthanc(tmp_path, orthanc, name):
    orthanc.clear()
    config = send_config(tmp_path, orthanc.destinations())
    files = study_files(tmp_path)
    with TestClient(create_app(config)) as client:
        ids = upload(client, files)
        svc = client.app.state.svc
        outcomes = client.portal.call(sending.deliver, svc, config.network_config.destination(name), [*ids, "gone"], False)
    assert [o.id for o in outcomes] == [*ids, "gone"]
    assert [o.status for o in outcomes] == ["sent"] * len(ids) + ["failed"], outcomes
    assert outcomes[-1].transient is False
    assert sorted(o.sent_uid for o in outcomes[:-1]) == uids_of(files)
    assert orthanc.sop_uids() == uids_of(files)


@pytest.mark.parametrize("name", ["pacs", "web"])
def test_deliver_to_a_destination_that_is_not_there_fails_transiently(tmp_path, name):
    port = servers.free_port()  # nothing listens there
    destinations = {
        "pacs": {"type": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": port},
        "web": {"type": "stowrs", "url": f"http://127.0.0.1:{port}/dicom-web"},
    }
    config = send_config(tmp_path, destinations)
    with TestClient(create_app(config)) as client:
        ids = upload(client, study_files(tmp_path, series=1, per_series=2))
        outcomes = client.portal.call(sending.deliver, client.app.state.svc, config.network_config.destination(name), ids, False)
    assert [(o.status, o.transient, o.detail) for o in outcomes] == [("failed", True, "connection refused")] * 2


def test_deliver_never_raises_for_what_goes_wrong_on_the_way(tmp_path, orthanc, monkeypatch):
    """An error while sending (here pynetdicom's association raising) is each instance's transient
    failure: the caller retries; deliver does not raise."""
    from dicomsvc import tasks

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(tasks, "scu_associate", broken)
    config = send_config(tmp_path, orthanc.destinations())
    with TestClient(create_app(config)) as client:
        ids = upload(client, study_files(tmp_path, series=1, per_series=2))
        outcomes = client.portal.call(sending.deliver, client.app.state.svc, config.network_config.destination("pacs"), ids, False)
    assert [(o.status, o.transient, o.detail) for o in outcomes] == [("failed", True, "not sent (RuntimeError)")] * 2


def test_an_association_rejected_for_good_is_no_transient_failure(tmp_path):
    """Orthanc checking the called AE title rejects an association to another one (A-ASSOCIATE-RJ
    rejected-permanent, PS3.8 Table 9-21): failed, not worth retrying."""
    strict = Orthanc(tmp_path / "orthanc", DicomCheckCalledAet=True).start()
    try:
        wrong = {"pacs": {"type": "dimse", "ae_title": "NOTORTHANC", "host": "127.0.0.1", "port": strict.dicom_port}}
        config = send_config(tmp_path, wrong)
        with TestClient(create_app(config)) as client:
            ids = upload(client, study_files(tmp_path, series=1, per_series=1))
            outcomes = client.portal.call(sending.deliver, client.app.state.svc, config.network_config.destination("pacs"), ids, False)
        assert [(o.status, o.transient, o.detail) for o in outcomes] == [("failed", False, "association rejected (permanent)")]
        assert strict.sop_uids() == []
    finally:
        strict.stop()


def test_a_send_stopped_while_anonymizing_leaves_no_copy_behind(tmp_path, orthanc, monkeypatch):
    """The anonymized copies already made are removed when the batch is cancelled (the app stopping)."""
    from dicomsvc import sendfiles, tasks

    made, calls = [], itertools.count()

    def copy_or_stop(config, dcm_blob):
        if next(calls) > 0:  # the second: cancelled, as the worker's task would be
            raise asyncio.CancelledError
        made.append(sendfiles.anonymized_copy(config, dcm_blob)[0])
        return made[-1], "2.25.1", 1

    monkeypatch.setattr(tasks, "anonymized_copy", copy_or_stop)
    config = send_config(tmp_path, orthanc.destinations(), DICOMSVC_WORKERS="0")
    with TestClient(create_app(config)) as client:
        ids = upload(client, study_files(tmp_path, series=1, per_series=2))
        with pytest.raises((asyncio.CancelledError, concurrent.futures.CancelledError)):
            client.portal.call(sending.deliver, client.app.state.svc, config.network_config.destination("pacs"), ids, True)
    assert made and not Path(made[0]).exists()


class StowRecorder:
    """A STOW-RS endpoint of our own on a loopback port: records each request (path, headers,
    body) and answers 200 listing every SOP Instance UID it was sent (PS3.18 §10.5.3)."""

    def __init__(self):
        import http.server
        import threading

        from pydicom import dcmread as read

        recorder = self
        self.requests: list[tuple[str, dict, bytes]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                recorder.requests.append((self.path, dict(self.headers), body))
                boundary = self.headers["Content-Type"].split("boundary=")[1].encode()
                parts = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in body.split(b"--" + boundary)[1:-1]]
                uids = [str(read(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID) for p in parts]
                answer = json.dumps({"00081199": {"vr": "SQ", "Value": [_item(u) for u in uids]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/base"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_stow_request_shape_token_and_byte_bound(tmp_path):
    """What goes out: POST {url}/studies, multipart/related; type="application/dicom" with one
    application/dicom part per instance holding the stored file's bytes, the bearer token, and
    no request body past DICOMSVC_SEND_BATCH_BYTES (three 4 KB instances, a bound of 6 KB: three
    requests)."""
    recorder = StowRecorder()
    try:
        destinations = {"web": {"type": "stowrs", "url": recorder.url, "token": "s3cret"}}
        config = send_config(tmp_path, destinations, DICOMSVC_SEND_BATCH_BYTES="6000")
        files = study_files(tmp_path, series=1, per_series=3)
        with TestClient(create_app(config)) as client:
            ids = upload(client, files)
            outcomes = client.portal.call(sending.deliver, client.app.state.svc, config.network_config.destination("web"), ids, False)
        assert [o.status for o in outcomes] == ["sent"] * 3
        assert len(recorder.requests) == 3
        sent = []
        for path, headers, body in recorder.requests:
            assert path == "/base/studies"
            assert headers["Authorization"] == "Bearer s3cret"
            media, *params = [p.strip() for p in headers["Content-Type"].split(";")]
            assert media == "multipart/related" and 'type="application/dicom"' in params
            boundary = next(p for p in params if p.startswith("boundary=")).split("=", 1)[1]
            assert body.endswith(f"--{boundary}--\r\n".encode())
            for part in body.split(f"--{boundary}".encode())[1:-1]:
                head, content = part.split(b"\r\n\r\n", 1)
                assert head.strip() == b"Content-Type: application/dicom"
                sent.append(content[:-2])
        assert sorted(sent) == sorted(p.read_bytes() for p in files)
    finally:
        recorder.close()


# status mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, expected",
    [
        (0x0000, (True, False, None)),
        (0xB000, (True, False, "C-STORE warning 0xB000")),  # coercion of data elements
        (0xB007, (True, False, "C-STORE warning 0xB007")),  # data set does not match SOP class
        (0xB006, (True, False, "C-STORE warning 0xB006")),  # elements discarded
        (0xA700, (False, True, "C-STORE status 0xA700")),  # refused: out of resources
        (0xA7FF, (False, True, "C-STORE status 0xA7FF")),
        (0xA900, (False, False, "C-STORE status 0xA900")),  # data set does not match SOP class
        (0xC000, (False, False, "C-STORE status 0xC000")),  # cannot understand
        (0x0122, (False, False, "C-STORE status 0x0122")),  # SOP class not supported
    ],
)
def test_c_store_status_mapping(code, expected):
    assert sending.c_store_result(code) == expected


def _item(uid: str, reason_tag: str | None = None, reason: int | None = None) -> dict:
    item = {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}, "00081155": {"vr": "UI", "Value": [uid]}}
    if reason_tag:
        item[reason_tag] = {"vr": "US", "Value": [reason]}
    return item


def test_stow_answer_mapping():
    answer = {
        "00081199": {"vr": "SQ", "Value": [_item("1.1"), _item("1.2", "00081196", 0xB000)]},
        "00081198": {"vr": "SQ", "Value": [_item("1.3", "00081197", 0xA700), _item("1.4", "00081197", 0xC122)]},
    }
    found = sending.stow_results(202, json.dumps(answer).encode(), ["1.1", "1.2", "1.3", "1.4", "1.5"])
    assert found == {
        "1.1": (True, False, None),
        "1.2": (True, False, "STOW-RS warning 0xB000"),
        "1.3": (False, True, "STOW-RS failure reason 0xA700"),  # out of resources: retried
        "1.4": (False, False, "STOW-RS failure reason 0xC122"),  # SOP class not supported
        "1.5": (False, False, "not in the STOW-RS answer"),
    }
    conflict = {"00081198": {"vr": "SQ", "Value": [_item("1.1", "00081197", 0x0110)]}}
    assert sending.stow_results(409, json.dumps(conflict).encode(), ["1.1"]) == {"1.1": (False, False, "STOW-RS failure reason 0x0110")}
    assert sending.stow_results(200, b"", ["1.1"]) == {"1.1": (True, False, None)}  # a 200 listing nothing: all stored
    assert sending.stow_results(503, b"busy", ["1.1"]) == {"1.1": (False, True, "HTTP 503")}
    assert sending.stow_results(429, b"", ["1.1"]) == {"1.1": (False, True, "HTTP 429")}
    assert sending.stow_results(401, b"", ["1.1"]) == {"1.1": (False, False, "HTTP 401")}
    assert sending.stow_results(400, b"<xml/>", ["1.1"]) == {"1.1": (False, False, "HTTP 400")}


# POST /dicom/send --------------------------------------------------------------------------------


def finished(client, job_id: str, bound: float = 180.0) -> dict:
    """The job's status once it is done (a generous liveness bound, not a timing threshold)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} not done: {job}")


def send(client, body: dict) -> str:
    answer = client.post("/dicom/send", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status_url"].endswith(f"/jobs/{answer.json()['job']}")
    return answer.json()["job"]


@pytest.mark.parametrize("name", ["pacs", "web"])
def test_send_a_study_as_a_job(tmp_path, orthanc, name):
    orthanc.clear()
    config = send_config(tmp_path, orthanc.destinations(), DICOMSVC_SEND_BATCH="4")
    files = study_files(tmp_path)  # 6 instances: batches of 4 and 2
    with TestClient(create_app(config)) as client:
        ids = upload(client, files)
        upload(client, study_files(tmp_path, series=1, per_series=1))  # another study: not sent
        study = str(dcmread(files[0]).StudyInstanceUID)
        job = finished(client, send(client, {"to": name, "study": study}))
    assert (job["status"], job["total"], job["sent"], job["failed"], job["processed"]) == ("done", 6, 6, 0, 6)
    assert sorted(r["id"] for r in job["results"]) == sorted(ids)
    assert {(r["status"], r["to"]) for r in job["results"]} == {("sent", name)}
    assert orthanc.sop_uids() == uids_of(files)


def test_an_import_job_has_no_sent_count(tmp_path, orthanc):
    """The job JSON of other jobs is unchanged: "sent" is a send's only."""
    config = send_config(tmp_path, orthanc.destinations())
    with TestClient(create_app(config)) as client:
        files = study_files(tmp_path, series=1, per_series=1)
        job = send(client, {"to": "pacs", "ids": upload(client, files)})
        assert "sent" in finished(client, job)
        (tmp_path / "import").mkdir(exist_ok=True)
        shutil.copy(files[0], tmp_path / "import" / "a.dcm")
        answer = client.post("/dicom?async=true", json={"path": "."})  # an import job
        assert answer.status_code == 202, answer.text
        assert "sent" not in finished(client, answer.json()["job"])


def test_send_anonymized_twice_is_one_study_without_the_patient(tmp_path, orthanc):
    """With anonymize: Orthanc holds no planted marker, date or UID, in any instance; sending the
    2-series study twice gives one study (the same pseudonymous UIDs), six instances."""
    from phi_fixture import UID_ROOT, build_study, to_bytes

    orthanc.clear()
    study = build_study(patient_id="PAT4711SEND")
    config = send_config(tmp_path, orthanc.destinations())
    with TestClient(create_app(config)) as client:
        ids = []
        for ds in [ds for series in study.instances for ds in series]:
            answer = client.post("/dicom", content=to_bytes(ds), headers={"content-type": "application/dicom"})
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        for name in ("pacs", "web"):  # once over C-STORE, once over STOW-RS: the same UIDs
            job = finished(client, send(client, {"to": name, "ids": ids, "anonymize": True}))
            assert (job["sent"], job["failed"]) == (6, 0), [r for r in job["results"] if r["status"] != "sent"]
        assert client.get(f"/dicom/{ids[0]}").status_code == 200  # the original is kept
    with orthanc.rest() as rest:
        assert len(rest.get("/studies").json()) == 1
        assert len(rest.get("/series").json()) == 2
        instances = rest.get("/instances").json()
        assert len(instances) == 6
        texts = [rest.get(f"/instances/{i}/tags").text for i in instances]
    planted = [*study.planted.markers, "STUDYPATIENT", UID_ROOT, *study.planted.dates]
    for text in texts:
        assert "PAT4711SEND" not in text
        assert [m for m in planted if m in text] == []
    assert sorted(r["sent_uid"] for r in job["results"]) == orthanc.sop_uids()


def test_an_instance_stored_anonymized_goes_as_it_is(tmp_path, orthanc):
    orthanc.clear()
    config = send_config(tmp_path, orthanc.destinations())
    (path,) = study_files(tmp_path, series=1, per_series=1)
    with TestClient(create_app(config)) as client:
        answer = client.post("/dicom?anonymize=true", content=path.read_bytes(), headers={"content-type": "application/dicom"})
        assert answer.status_code == 201, answer.text
        stored = client.get(f"/dicom/{answer.json()['id']}").json()
        assert stored["anonymized"] is True
        job = finished(client, send(client, {"to": "web", "ids": [stored["id"]], "anonymize": True}))
    assert [r["sent_uid"] for r in job["results"]] == [stored["SOPInstanceUID"]]  # not anonymized twice
    assert orthanc.sop_uids() == [stored["SOPInstanceUID"]]


def test_a_destination_down_at_first_receives_everything_once(tmp_path):
    """Orthanc started only after the job's first attempts failed (connection refused): the job
    retries with backoff and every instance arrives, once."""
    from dicomsvc import metrics

    later = Orthanc(tmp_path / "orthanc")  # its ports chosen, nothing listening yet
    config = send_config(tmp_path, later.destinations(), DICOMSVC_SEND_BACKOFF_SECONDS="1",
                         DICOMSVC_SEND_BACKOFF_MAX_SECONDS="2", DICOMSVC_SEND_RETRIES="60", DICOMSVC_SEND_BATCH="3")  # fmt: skip
    transient = metrics.SENT.labels("dimse", "transient")
    files = study_files(tmp_path)
    try:
        with TestClient(create_app(config)) as client:
            ids = upload(client, files)
            before = transient._value.get()
            job_id = send(client, {"to": "pacs", "ids": ids})
            deadline = time.monotonic() + 60
            while transient._value.get() == before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert transient._value.get() > before  # an attempt failed: the destination was down
            assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
            later.start()
            job = finished(client, job_id)
        assert (job["sent"], job["failed"]) == (6, 0), job
        assert later.sop_uids() == uids_of(files)
    finally:
        later.stop()


def test_out_of_resources_is_retried_until_stored(tmp_path):
    """A Storage SCP (pynetdicom, here) answering 0xA700 (refused: out of resources, PS3.4 B.2.3)
    to the first two C-STOREs of each instance: the job tries again and all are sent."""
    refusals: dict[str, int] = {}
    stored: list[str] = []

    def on_store(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        refusals[uid] = refusals.get(uid, 0) + 1
        if refusals[uid] <= 2:
            return 0xA700
        stored.append(uid)
        return 0x0000

    with storage_scp("BUSYSCP", on_store) as port:
        config = send_config(tmp_path, {"busy": {"type": "dimse", "ae_title": "BUSYSCP", "host": "127.0.0.1", "port": port}})
        files = study_files(tmp_path, series=1, per_series=3)
        with TestClient(create_app(config)) as client:
            job = finished(client, send(client, {"to": "busy", "ids": upload(client, files)}))
        assert (job["sent"], job["failed"]) == (3, 0), job["results"]
        assert sorted(stored) == uids_of(files)
        assert sorted(refusals.values()) == [3, 3, 3]


@contextlib.contextmanager
def storage_scp(ae_title: str, on_store):
    """A Storage SCP of pynetdicom's on a free loopback port (yielded) answering with ``on_store``."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    scp = AE(ae_title=ae_title)
    scp.supported_contexts = AllStoragePresentationContexts
    port = servers.free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield port
    finally:
        server.shutdown()


def test_a_peer_closing_right_after_rejecting_is_a_permanent_rejection():
    """A peer that sends A-ASSOCIATE-RJ (rejected-permanent, PS3.8 §9.3.4) and closes at once, as
    Orthanc does: each attempt is the permanent rejection. Before, pynetdicom sometimes handled the
    closed transport first and the attempt was 'association aborted', a transient failure (about
    1 in 30 here; the full suite's Orthanc rejection test failed on it under load)."""
    import socket
    import threading

    from dicomsvc.dimse import scu

    rejection = bytes([0x03, 0x00, 0, 0, 0, 4, 0x00, 0x01, 0x01, 0x07])  # permanent, service-user, called AE unknown
    listener = socket.create_server(("127.0.0.1", 0))

    def reject_each() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                head = conn.recv(6, socket.MSG_WAITALL)  # the A-ASSOCIATE-RQ's header, then its body
                if len(head) == 6:
                    conn.recv(int.from_bytes(head[2:], "big"), socket.MSG_WAITALL)
                    conn.sendall(rejection)

    threading.Thread(target=reject_each, daemon=True).start()
    row = {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "transfer_syntax_uid": "1.2.840.10008.1.2.1"}
    try:
        errors = [scu.associate("DICOMSVC", "ANY", "127.0.0.1", listener.getsockname()[1], [row], (5, 5, 5, 5))
                  for _ in range(100)]  # fmt: skip
    finally:
        listener.close()
    assert {(link.error, link.transient) for link in errors} == {("association rejected (permanent)", False)}


def test_the_storage_scu_sends_without_nagle(tmp_path):
    """The Storage SCU's association socket has TCP_NODELAY set (contexts.no_delay): into
    Orthanc, whose Maximum Length is 16 KiB, a CT's PDU tails waited for delayed ACKs before."""
    import socket

    from dicomsvc.dimse import scu

    with storage_scp("NAGLESCP", lambda event: 0x0000) as port:
        (path,) = study_files(tmp_path, series=1, per_series=1)
        ds = dcmread(path)
        row = {"sop_class_uid": str(ds.SOPClassUID), "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID)}
        link = scu.associate("DICOMSVC", "NAGLESCP", "127.0.0.1", port, [row], (5, 5, 5, 5))
        try:
            assert link.error is None
            assert link.raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert scu.store(link, path, row["sop_class_uid"], row["transfer_syntax_uid"]) == (0x0000, None, False)
        finally:
            scu.close(link)


def test_closing_waits_for_the_c_store_under_way(tmp_path):
    """The sender's task cancelled (the app stopping) while a C-STORE runs in an I/O thread: the
    association's release waits for its answer -- sent meanwhile, pynetdicom's state machine broke
    (InvalidEventError 'Evt9' in 'Sta7' in its reactor thread, an unhandled thread exception)."""
    import threading

    from dicomsvc.dimse import scu

    answering = threading.Event()

    def slow_store(event):
        answering.set()
        time.sleep(1.0)
        return 0x0000

    with storage_scp("SLOWSCP", slow_store) as port:
        (path,) = study_files(tmp_path, series=1, per_series=1)
        ds = dcmread(path)
        row = {"sop_class_uid": str(ds.SOPClassUID), "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID)}
        link = scu.associate("DICOMSVC", "SLOWSCP", "127.0.0.1", port, [row], (5, 5, 5, 5))
        assert link.error is None
        result = []
        storing = threading.Thread(target=lambda: result.append(scu.store(link, path, row["sop_class_uid"], row["transfer_syntax_uid"])))
        storing.start()
        assert answering.wait(10)
        scu.close(link)  # while the C-STORE waits for its answer
        storing.join(10)
        assert result == [(0x0000, None, False)]


def test_a_send_cancelled_while_associating_releases_the_association(tmp_path, orthanc, monkeypatch):
    """The association a cancelled send was making (in its I/O thread) is released once made."""
    from dicomsvc import tasks
    from dicomsvc.dimse import scu

    made = []

    def slow_associate(*args):
        time.sleep(0.5)
        made.append(scu.associate(*args))
        return made[-1]

    monkeypatch.setattr(tasks, "scu_associate", slow_associate)
    config = send_config(tmp_path, orthanc.destinations())
    with TestClient(create_app(config)) as client:
        ids = upload(client, study_files(tmp_path, series=1, per_series=1))
        future = client.portal.start_task_soon(sending.deliver, client.app.state.svc, config.network_config.destination("pacs"), ids, False)
        time.sleep(0.1)
        future.cancel()
        deadline = time.monotonic() + 30
        while not (made and not made[0].assoc.is_established) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert made and made[0].error is None and not made[0].assoc.is_established


def test_a_destination_that_stays_down_fails_after_the_retries(tmp_path):
    port = servers.free_port()
    config = send_config(tmp_path, {"web": {"type": "stowrs", "url": f"http://127.0.0.1:{port}/dicom-web"}},
                         DICOMSVC_SEND_RETRIES="2")  # fmt: skip
    with TestClient(create_app(config)) as client:
        ids = upload(client, study_files(tmp_path, series=1, per_series=2))
        job = finished(client, send(client, {"to": "web", "ids": ids}))
    assert (job["status"], job["sent"], job["failed"]) == ("done", 0, 2)
    assert {r["detail"] for r in job["results"]} == {"connection refused (after 3 attempts)"}


def test_delete_after_removes_what_was_sent_and_keeps_what_failed(tmp_path, orthanc):
    """An instance of a SOP class Orthanc does not accept (no presentation context) fails and
    is kept; the others are sent and deleted here."""
    orthanc.clear()
    config = send_config(tmp_path, orthanc.destinations())
    files = study_files(tmp_path, series=1, per_series=3)
    odd = make_ct(SOPClassUID="1.2.826.0.1.3680043.10.998.1")  # a private SOP class: Orthanc refuses its context
    odd.file_meta.MediaStorageSOPClassUID = odd.SOPClassUID
    with TestClient(create_app(config)) as client:
        ids = upload(client, [*files, save(odd, tmp_path / "odd.dcm")])
        job = finished(client, send(client, {"to": "pacs", "ids": ids, "delete_after": True}))
        assert (job["sent"], job["failed"]) == (3, 1), job
        failed = [r for r in job["results"] if r["status"] == "failed"]
        assert failed == [{"id": ids[3], "status": "failed", "detail": "no presentation context accepted", "to": "pacs"}]
        assert [client.get(f"/dicom/{i}").status_code for i in ids] == [404, 404, 404, 200]
        assert client.get("/stats").json()["instances"] == 1
        trail = client.get("/audit", params={"resource": job["id"]}).json()["items"]
        assert sorted((r["action"], r["status"], r["client"]) for r in trail if r["method"] == "JOB") == sorted(
            [("send", 200, "to:pacs")] * 3 + [("send", 502, "to:pacs")] + [("delete", 204, None)] * 3
        )
    assert orthanc.sop_uids() == uids_of(files)


def test_send_resumes_after_a_restart(tmp_path, orthanc, monkeypatch):
    """The app stopped mid-job (after its first batch): started again, the job goes on with the
    pending instances and every instance is at the destination once."""
    from dicomsvc import sendjobs

    orthanc.clear()
    config = send_config(tmp_path, orthanc.destinations(), DICOMSVC_SEND_BATCH="2")
    files = study_files(tmp_path, series=2, per_series=4)
    real = sendjobs._record
    calls = []

    async def record_then_hang(*args):
        await real(*args)
        calls.append(1)
        await asyncio.Event().wait()  # stuck after the first batch: the app stops meanwhile

    monkeypatch.setattr(sendjobs, "_record", record_then_hang)
    with TestClient(create_app(config)) as client:
        ids = upload(client, files)
        job_id = send(client, {"to": "web", "ids": ids})
        deadline = time.monotonic() + 60
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        job = client.get(f"/jobs/{job_id}").json()
        assert (job["status"], job["sent"]) == ("running", 2), job
    monkeypatch.setattr(sendjobs, "_record", real)
    with TestClient(create_app(config)) as client:
        job = finished(client, job_id)
    assert (job["status"], job["sent"], job["failed"]) == ("done", 8, 0), job
    assert orthanc.sop_uids() == uids_of(files)


def test_send_refusals(tmp_path, orthanc):
    config = send_config(tmp_path, orthanc.destinations(), DICOMSVC_SEND_MAX_INSTANCES="2")
    with TestClient(create_app(config)) as client:
        ids = upload(client, study_files(tmp_path, series=1, per_series=3))
        cases = [
            ({"to": "nowhere", "ids": ids[:1]}, 400),
            ({"ids": ids[:1]}, 400),
            ({"to": "pacs"}, 400),
            ({"to": "pacs", "ids": ids[:1], "study": "1.2.3"}, 400),
            ({"to": "pacs", "ids": []}, 400),
            ({"to": "pacs", "ids": ["not an id"]}, 400),
            ({"to": "pacs", "ids": ids[:1], "anonymize": "yes"}, 400),
            ({"to": "pacs", "ids": ids[:1], "extra": 1}, 400),
            ({"to": "pacs", "filter": {}}, 400),
            ({"to": "pacs", "filter": {"PatientName": "x"}}, 400),
            ({"to": "pacs", "study": "not a uid"}, 400),
            ({"to": "pacs", "ids": ["A" * 22]}, 404),
            ({"to": "pacs", "study": "1.2.3.4"}, 404),
            ({"to": "pacs", "filter": {"Modality": "MR"}}, 404),
            ({"to": "pacs", "ids": ids}, 413),
            ({"to": "pacs", "filter": {"Modality": "CT"}}, 413),
        ]
        for body, status in cases:
            answer = client.post("/dicom/send", json=body)
            assert answer.status_code == status, (body, answer.text)
            assert set(answer.json()) == {"error", "detail"}
        assert client.post("/dicom/send", content=b"[1]", headers={"content-type": "application/json"}).status_code == 400
        assert client.get("/jobs").json()["items"] == []


def test_delete_after_needs_the_admin_role(tmp_path, orthanc, monkeypatch):
    from authhelpers import bearer, token_app

    network = tmp_path / "network.json"
    network.write_text(json.dumps({"destinations": orthanc.destinations()}))
    users = {"up": "uploader", "boss": "admin", "ro": "reader"}
    with token_app(monkeypatch, tmp_path / "data", tmp_path / "import", users, network_config=str(network)) as (client, tokens):
        (path,) = study_files(tmp_path, series=1, per_series=1)
        answer = client.post("/dicom", content=path.read_bytes(), headers={"content-type": "application/dicom", **bearer(tokens["up"])})
        assert answer.status_code == 201, answer.text
        one = {"to": "pacs", "ids": [answer.json()["id"]]}
        assert client.post("/dicom/send", json=one, headers=bearer(tokens["ro"])).status_code == 403
        assert client.post("/dicom/send", json=one | {"delete_after": True}, headers=bearer(tokens["up"])).status_code == 403
        jobs = [client.post("/dicom/send", json=one, headers=bearer(tokens["up"])),
                client.post("/dicom/send", json=one | {"delete_after": True}, headers=bearer(tokens["boss"]))]  # fmt: skip
        assert [j.status_code for j in jobs] == [202, 202]
        for job in jobs:  # done before the app stops
            deadline = time.monotonic() + 120
            while client.get(f"/jobs/{job.json()['job']}", headers=bearer(tokens["boss"])).json()["status"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.1)


def test_compressed_instances_go_decompressed_where_only_uncompressed_is_taken(tmp_path):
    """A destination accepting only Implicit/Explicit VR Little Endian (Orthanc's
    AcceptedTransferSyntaxes) gets a JPEG 2000 and an RLE instance decompressed (Explicit VR
    Little Endian, PS3.5 A.2), an uncompressed one as it is."""
    native = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]
    plain = Orthanc(tmp_path / "orthanc", AcceptedTransferSyntaxes=native).start()
    try:
        config = send_config(tmp_path, plain.destinations())
        files = [sample_file(name) for name in ("JPEG2000.dcm", "MR_small_RLE.dcm", "CT_small.dcm")]
        with TestClient(create_app(config)) as client:
            ids = upload(client, files)
            job = finished(client, send(client, {"to": "pacs", "ids": ids}))
        assert (job["sent"], job["failed"]) == (3, 0), job["results"]
        assert plain.sop_uids() == uids_of(files)
        with plain.rest() as rest:
            syntaxes = {rest.get(f"/instances/{i}/header?simplify").json()["TransferSyntaxUID"] for i in rest.get("/instances").json()}
        assert syntaxes == {"1.2.840.10008.1.2.1"}
    finally:
        plain.stop()
