"""Sending (dicomsvc/sending.py, POST /dicom/send): stored instances to Orthanc (Debian's) over
C-STORE and over STOW-RS (its orthanc-dicomweb plugin), checked through Orthanc's REST API; the
C-STORE status and STOW-RS answer mapping as unit tests.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from app import create_app
from dicomfiles import make_ct, save
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

    def __init__(self, work: Path, dicom_port: int | None = None):
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
        path.write_text(json.dumps(cfg))
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
