"""DICOM networking (dicomsvc/dimse): the SCP against real peers on this machine.

dcmtk's echoscu, storescu, findscu, getscu and movescu (and storescp as a C-MOVE
destination) talk to the app started in this process (TestClient runs its lifespan, so the
SCP listens on a free port); pynetdicom is the SCU where dcmtk cannot be (compressed
transfer syntaxes, a dropped association, hostile data sets). Results are compared with
what the HTTP API shows.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

import indexdb
from app import create_app
from dicomfiles import make_ct, sample_file, save
from dicomsvc.config import Config

# dcmtk's tools are the peers: without them these tests skip, except in CI (.ci/run installs them)
if shutil.which("storescu") is None and os.environ.get("CI") == "true":
    raise RuntimeError("dcmtk (storescu, findscu, getscu, movescu, storescp, echoscu) is not installed")
pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")

# pydicom's files in several transfer syntaxes: (file, transfer syntax UID)
FILES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "rtplan.dcm": "1.2.840.10008.1.2",  # Implicit VR Little Endian, no pixel data
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
    "JPEG-LL.dcm": "1.2.840.10008.1.2.4.70",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def network_file(tmp_path: Path, peers: list[dict], destinations: dict | None = None) -> Path:
    path = tmp_path / "network.json"
    path.write_text(json.dumps({"peers": peers, "destinations": destinations or {}, "rules": []}))
    return path


def dimse_config(tmp_path: Path, peers: list[dict], destinations: dict | None = None, **env: str) -> Config:
    return Config.from_env(
        {
            "DICOMSVC_DATA_DIR": str(tmp_path / "data"),
            "DICOMSVC_IMPORT_ROOT": str(tmp_path / "import"),
            "DICOMSVC_HOST": "127.0.0.1",
            "DICOMSVC_WORKERS": "0",
            "DICOMSVC_DIMSE_PORT": str(free_port()),
            "DICOMSVC_NETWORK_CONFIG": str(network_file(tmp_path, peers, destinations)),
        }
        | env
    )


PEERS = [
    {"ae_title": "STORESCU", "host": "127.0.0.1", "user": "scanner1"},
    {"ae_title": "FINDSCU"},
    {"ae_title": "GETSCU"},
    {"ae_title": "MOVESCU"},
    {"ae_title": "ECHOSCU"},
    {"ae_title": "ANONSCU", "anonymize": True},
    {"ae_title": "PYNETDICOM"},
]


@pytest.fixture
def scp(tmp_path):
    """(HTTP client, config) of an app whose SCP listens on a free port."""
    config = dimse_config(tmp_path, PEERS, {"store": {"type": "dimse", "ae_title": "STORESCP", "host": "127.0.0.1",
                                                      "port": 1}})  # fmt: skip (port replaced by tests that move)
    with TestClient(create_app(config)) as client:
        yield client, config


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout)


def dcmtk(tool: str, config: Config, *args: str, ae: str | None = None, after: tuple = (), timeout: float = 120):
    """``tool`` as peer ``ae`` (default: the tool's name), ``args`` before the address, ``after`` after it."""
    calling = ae or tool.upper()
    return run(tool, "-aet", calling, "-aec", config.ae_title, *args, "127.0.0.1", str(config.dimse_port), *after,
               timeout=timeout)  # fmt: skip


def test_echoscu(scp):
    _, config = scp
    done = dcmtk("echoscu", config, "-v")
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Received Echo Response (Success)" in output, output


def test_an_unknown_calling_ae_is_rejected_at_association(scp):
    _, config = scp
    done = dcmtk("echoscu", config, "-v", ae="STRANGER")
    output = done.stdout + done.stderr
    assert "Association Rejected" in output and "Calling AE Title Not Recognized" in output, output
    assert "Echo Response" not in output


def test_a_peer_from_another_host_is_rejected(tmp_path):
    config = dimse_config(tmp_path, [{"ae_title": "ECHOSCU", "host": "10.1.2.3"}])
    with TestClient(create_app(config)):
        done = dcmtk("echoscu", config, "-v")
    output = done.stdout + done.stderr
    assert "Association Rejected" in output and "Calling AE Title Not Recognized" in output, output


def pydicom_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "send"
    folder.mkdir()
    for name in FILES:
        shutil.copyfile(sample_file(name), folder / name)
    return folder


def test_storescu_of_files_in_several_transfer_syntaxes_then_seen_over_http(scp, tmp_path):
    client, config = scp
    folder = pydicom_folder(tmp_path)
    # storescu proposes each file's own transfer syntax from a profile (-xf): a presentation
    # context for each (SOP class, transfer syntax) pair, each syntax a group of its own
    profile = tmp_path / "storescu.cfg"
    pairs = sorted({(str(dcmread(sample_file(n), stop_before_pixels=True).SOPClassUID), ts) for n, ts in FILES.items()})
    syntaxes = sorted({ts for _, ts in pairs})
    profile.write_text(
        "[[TransferSyntaxes]]\n"
        + "".join(f"[TS{i}]\nTransferSyntax1 = {ts}\n" for i, ts in enumerate(syntaxes))
        + "\n[[PresentationContexts]]\n[Files]\n"
        + "".join(f"PresentationContext{i + 1} = {sop}\\TS{syntaxes.index(ts)}\n" for i, (sop, ts) in enumerate(pairs))
        + "\n[[Profiles]]\n[Files]\nPresentationContexts = Files\n"
    )
    done = dcmtk("storescu", config, "-v", "-xf", str(profile), "Files", "+sd", after=(str(folder),))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("Received Store Response (Success)") == len(FILES), output
    rows = client.get("/dicom", params={"limit": 100}).json()["items"]
    assert len(rows) == len(FILES)
    by_sop = {r["SOPInstanceUID"]: r for r in rows}
    for name, syntax in FILES.items():
        ds = dcmread(sample_file(name), stop_before_pixels=True)
        row = by_sop[ds.SOPInstanceUID]
        assert row["uploaded_by"] == "scanner1"  # the peer's configured user owns them
        assert client.get(f"/dicom/{row['id']}").json()["TransferSyntaxUID"] == syntax
        tags = client.get("/tags", params={"id": row["id"]}).json()["tags"]
        assert any(t["Name"] == "SOPInstanceUID" and t["Value"] == ds.SOPInstanceUID for t in tags)
    with indexdb.index(config) as db:  # the calling AE title and address are the source
        assert {r[0] for r in db.execute("SELECT source FROM dicom").fetchall()} == {"dimse:STORESCU@127.0.0.1"}
    expected = [("upload", "C-STORE", "STORESCU@127.0.0.1", 201, "scanner1")] * len(FILES)
    assert wait_for(lambda: audit_rows(config, "C-STORE") == expected)


def audit_rows(config: Config, method: str) -> list[tuple]:
    with indexdb.index(config) as db:
        query = "SELECT action, method, client, status, \"user\" FROM audit WHERE method = ?"
        return sorted(db.execute(query, (method,)).fetchall())


def wait_for(check, seconds: float = 30) -> bool:
    """``check()`` true within a generous liveness bound (the audit trail is written in batches)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# Query/Retrieve ----------------------------------------------------------------------------------


def two_studies(tmp_path: Path) -> list[Path]:
    """Two patients' studies, two series each, three instances a series: saved files."""
    files = []
    for p, (patient_id, name) in enumerate([("PAT-1", "Alpha^Ann"), ("PAT-2", "Beta^Bob")]):
        study = generate_uid()
        for s in range(2):
            series = generate_uid()
            for i in range(3):
                ds = make_ct(StudyInstanceUID=study, SeriesInstanceUID=series, PatientID=patient_id, PatientName=name,
                             SeriesNumber=s + 1, InstanceNumber=i + 1, StudyDescription=f"Study {p}",
                             Modality="CT" if s == 0 else "MR")  # fmt: skip
                files.append(save(ds, tmp_path / "made" / f"{p}-{s}-{i}.dcm"))
    return files


def upload(client, files: list[Path]) -> None:
    for path in files:
        answer = client.post("/dicom", content=path.read_bytes(), headers={"content-type": "application/dicom"})
        assert answer.status_code == 201, answer.text


def findscu(config: Config, out: Path, model: str, *keys: str) -> list[Dataset]:
    """findscu's matches (-X: each response identifier written to a file), in answer order."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*"):
        old.unlink()
    args = [model, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    done = dcmtk("findscu", config, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def qido(client, path: str) -> list[dict]:
    answer = client.get(f"/dicomweb/{path}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def values(results: list[dict], tag: str) -> set[str]:
    return {r[tag]["Value"][0] for r in results if "Value" in r.get(tag, {})}


def test_findscu_at_each_level_answers_what_qido_rs_shows(scp, tmp_path):
    client, config = scp
    upload(client, two_studies(tmp_path))
    out = tmp_path / "find"
    studies = qido(client, "studies")
    # PATIENT (Patient Root): the studies' patients, with their related counts
    patients = findscu(config, out, "-P", "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName",
                       "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances")  # fmt: skip
    assert {(str(d.PatientID), str(d.PatientName)) for d in patients} == {("PAT-1", "Alpha^Ann"), ("PAT-2", "Beta^Bob")}
    assert {int(d.NumberOfPatientRelatedStudies) for d in patients} == {1}
    assert {int(d.NumberOfPatientRelatedInstances) for d in patients} == {6}
    # STUDY, both information models
    for model in ("-S", "-P"):
        found = findscu(config, out, model, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID",
                        "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")  # fmt: skip
        assert {str(d.StudyInstanceUID) for d in found} == values(studies, "0020000D")
        assert all(d.RetrieveAETitle == config.ae_title for d in found)
        assert {tuple(d.ModalitiesInStudy) for d in found} == {("CT", "MR")}
    # a matching key: one patient, by a wildcard on the name (PS3.4 C.2.2.2.4)
    found = findscu(config, out, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName=Alp*")
    assert {str(d.StudyInstanceUID) for d in found} == values(qido(client, "studies?PatientName=Alp*"), "0020000D")
    assert len(found) == 1
    study = found[0].StudyInstanceUID
    # SERIES below the study
    series = findscu(config, out, "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", "SeriesInstanceUID",
                     "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances")  # fmt: skip
    shown = qido(client, f"studies/{study}/series")
    assert {str(d.SeriesInstanceUID) for d in series} == values(shown, "0020000E")
    assert [int(d.SeriesNumber) for d in series] == [1, 2] and {int(d.NumberOfSeriesRelatedInstances) for d in series} == {3}
    assert [d.Modality for d in series] == ["CT", "MR"]
    # IMAGE below the series
    first = series[0].SeriesInstanceUID
    images = findscu(config, out, "-S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                     f"SeriesInstanceUID={first}", "SOPInstanceUID", "InstanceNumber", "Rows", "PatientName")  # fmt: skip
    shown = qido(client, f"studies/{study}/series/{first}/instances")
    assert {str(d.SOPInstanceUID) for d in images} == values(shown, "00080018")
    assert [int(d.InstanceNumber) for d in images] == [1, 2, 3] and {int(d.Rows) for d in images} == {32}
    assert {str(d.PatientName) for d in images} == {"Alpha^Ann"}
    # a key the index has no column for comes from the stored data set (here: Bits Stored), and one
    # no instance has is returned empty
    images = findscu(config, out, "-S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                     f"SeriesInstanceUID={first}", "SOPInstanceUID", "BitsStored", "ContentDate")  # fmt: skip
    assert {int(d.BitsStored) for d in images} == {16} and all(d.ContentDate == "" for d in images)


def test_findscu_with_a_bad_identifier_fails_and_the_scp_goes_on(scp, tmp_path):
    _, config = scp
    done = dcmtk("findscu", config, "-v", "-S", "-k", "QueryRetrieveLevel=WARD", "-k", "PatientID")
    output = done.stdout + done.stderr
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in output, output
    done = dcmtk("findscu", config, "-v", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyDate=2024-01")
    output = done.stdout + done.stderr
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in output, output
    assert "Received Echo Response (Success)" in dcmtk("echoscu", config, "-v").stdout + dcmtk("echoscu", config, "-v").stderr


def same_data_set(a: Dataset, b: Dataset) -> bool:
    """Equal element by element (the file meta aside: the receiver writes its own)."""
    a, b = Dataset(a), Dataset(b)
    return a == b


def test_getscu_retrieves_the_stored_data_sets(scp, tmp_path):
    client, config = scp
    files = two_studies(tmp_path)
    upload(client, files)
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in files}
    study = str(dcmread(files[0]).StudyInstanceUID)
    out = tmp_path / "got"
    out.mkdir()
    done = dcmtk("getscu", config, "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                 "-od", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    got = [dcmread(p) for p in out.iterdir()]
    assert len(got) == 6
    for ds in got:
        assert str(ds.StudyInstanceUID) == study
        assert same_data_set(ds, originals[str(ds.SOPInstanceUID)])
    assert wait_for(lambda: len(audit_rows(config, "C-GET")) == 6)
    # one instance by its UIDs (IMAGE level)
    one = dcmread(files[7])
    for old in out.iterdir():
        old.unlink()
    done = dcmtk("getscu", config, "-S", "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={one.StudyInstanceUID}",
                 "-k", f"SeriesInstanceUID={one.SeriesInstanceUID}", "-k", f"SOPInstanceUID={one.SOPInstanceUID}",
                 "-od", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (only,) = [dcmread(p) for p in out.iterdir()]
    assert same_data_set(only, one)


@pytest.fixture
def storescp(tmp_path):
    """dcmtk's storescp as a C-MOVE destination: (AE title, port, folder it writes to)."""
    port, folder = free_port(), tmp_path / "moved"
    folder.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
        yield "STORESCP", port, folder
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_movescu_to_a_configured_destination(tmp_path, storescp):
    ae, port, folder = storescp
    config = dimse_config(tmp_path, PEERS, {"archive": {"type": "dimse", "ae_title": ae, "host": "127.0.0.1", "port": port}})
    with TestClient(create_app(config)) as client:
        files = two_studies(tmp_path)
        upload(client, files)
        one = dcmread(files[0])
        done = dcmtk("movescu", config, "-S", "-aem", ae, "-k", "QueryRetrieveLevel=SERIES",
                     "-k", f"StudyInstanceUID={one.StudyInstanceUID}", "-k", f"SeriesInstanceUID={one.SeriesInstanceUID}")  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        moved = [dcmread(p) for p in folder.iterdir()]
        assert sorted(str(d.SOPInstanceUID) for d in moved) == sorted(
            str(dcmread(p).SOPInstanceUID) for p in files[:3]
        )
        originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in files[:3]}
        assert all(same_data_set(d, originals[str(d.SOPInstanceUID)]) for d in moved)
        # a destination not in the configuration: Move Destination unknown (0xA801)
        done = dcmtk("movescu", config, "-v", "-S", "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
                     "-k", f"StudyInstanceUID={one.StudyInstanceUID}")  # fmt: skip
        output = done.stdout + done.stderr
        assert "Final Move Response (Refused: MoveDestinationUnknown)" in output, output


def test_two_c_moves_to_one_destination_each_use_their_own_association(tmp_path):
    """Two C-MOVEs to one destination at once: each decides what goes decompressed by what its
    own association accepted. A JPEG secondary capture is moved while a CT's move holds an
    association to the same destination that was made later but accepted first (the destination
    answers the SC's association late): the SC must go decompressed (the destination takes only
    uncompressed syntaxes). Before, the newest association to that AE title was taken for this
    request's -- the CT's, which has no SC context: the SC sub-operation failed."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import SecondaryCaptureImageStorage, StudyRootQueryRetrieveInformationModelMove

    uncompressed = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    stored: list[tuple[str, str]] = []

    def on_requested(event):  # the SC's association is answered after the CT's is made
        if any(cx.abstract_syntax == SecondaryCaptureImageStorage for cx in event.assoc.requestor.requested_contexts):
            time.sleep(1.0)

    def on_store(event):
        stored.append((str(event.request.AffectedSOPClassUID), str(event.context.transfer_syntax)))
        if event.request.AffectedSOPClassUID != SecondaryCaptureImageStorage:
            time.sleep(2.0)  # the CT's association stays established meanwhile
        return 0x0000

    dest = AE(ae_title="SLOWDEST")
    for cx in AllStoragePresentationContexts:
        dest.add_supported_context(cx.abstract_syntax, uncompressed)
    port = free_port()
    server = dest.start_server(("127.0.0.1", port), block=False,
                               evt_handlers=[(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, on_store)])  # fmt: skip
    config = dimse_config(tmp_path, PEERS, {"slow": {"type": "dimse", "ae_title": "SLOWDEST", "host": "127.0.0.1", "port": port}})
    try:
        with TestClient(create_app(config)) as client:
            files = [sample_file("SC_rgb_jpeg_dcmtk.dcm"), sample_file("CT_small.dcm")]
            upload(client, files)

            def move(path: Path) -> list[int]:
                identifier = Dataset()
                identifier.QueryRetrieveLevel = "STUDY"
                identifier.StudyInstanceUID = dcmread(path).StudyInstanceUID
                scu = AE(ae_title="MOVESCU")
                scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
                assoc = scu.associate("127.0.0.1", config.dimse_port, ae_title=config.ae_title)
                try:
                    return [int(status.Status) for status, _ in
                            assoc.send_c_move(identifier, "SLOWDEST", StudyRootQueryRetrieveInformationModelMove)]  # fmt: skip
                finally:
                    assoc.release()
                    scu.shutdown()

            with ThreadPoolExecutor(2) as pool:
                sc = pool.submit(move, files[0])
                time.sleep(0.4)  # the SC's association is being answered
                ct = pool.submit(move, files[1])
                assert (sc.result(timeout=60)[-1], ct.result(timeout=60)[-1]) == (0x0000, 0x0000)
    finally:
        server.shutdown()
    assert sorted(sop for sop, _ in stored) == sorted([SecondaryCaptureImageStorage, str(dcmread(files[1]).SOPClassUID)])
    assert all(syntax in uncompressed for _, syntax in stored)


# pynetdicom as the SCU: what dcmtk will not send ------------------------------------------------


@contextlib.contextmanager
def association(config: Config, contexts: list[tuple[str, str]], ae_title: str = "PYNETDICOM"):
    """An established association as ``ae_title``, proposing (SOP class, transfer syntax) pairs."""
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", config.dimse_port, ae_title=config.ae_title)
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # pynetdicom skips its close when shutdown() fails (peer gone)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
        raw.close()


def send_raw(config: Config, path: Path, ae_title: str = "PYNETDICOM") -> int:
    """C-STORE the file's bytes as they are, undecoded (pynetdicom's STORE_SEND_CHUNKED_DATASET:
    the Affected SOP Class/Instance UIDs and the transfer syntax come from its file meta)."""
    from pynetdicom import _config as pnd_config

    meta = dcmread(path, stop_before_pixels=True).file_meta
    previous = pnd_config.STORE_SEND_CHUNKED_DATASET
    pnd_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(config, [(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)], ae_title) as assoc:
            status = assoc.send_c_store(path)
            return int(status.Status)
    finally:
        pnd_config.STORE_SEND_CHUNKED_DATASET = previous


def stored_count(client) -> int:
    return len(client.get("/dicom", params={"limit": 1000}).json()["items"])


def echo_works(config: Config) -> bool:
    done = dcmtk("echoscu", config, "-v")
    return "Received Echo Response (Success)" in done.stdout + done.stderr


def test_associations_to_the_scp_run_without_nagle(tmp_path, monkeypatch):
    """The SCP's side of an association has TCP_NODELAY set (contexts.no_delay: a data set's
    P-DATA-TF PDUs and our answers do not wait for delayed ACKs; it was off before), and the
    Maximum Length it advertises is DICOMSVC_DIMSE_MAX_PDU (64 KiB: 4x pynetdicom's default)."""
    from dicomsvc.dimse.scp import Scp

    started: list[Scp] = []
    start = Scp.start

    async def recording(self):
        started.append(self)
        await start(self)

    monkeypatch.setattr(Scp, "start", recording)
    config = dimse_config(tmp_path, PEERS)
    with TestClient(create_app(config)):
        with association(config, [("1.2.840.10008.1.1", "1.2.840.10008.1.2")]) as assoc:
            assert int(assoc.send_c_echo().Status) == 0x0000
            assert assoc.acceptor.maximum_length == config.dimse_max_pdu == 65536  # PS3.8 §D.1: what we advertise
            (ours,) = [a for a in started[0].ae.active_associations if a.is_acceptor]
            assert ours.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_every_transfer_syntax_offered_for_storage_is_decodable_here():
    from dicomsvc.dimse.scp import STORABLE
    from dicomsvc.retrieve import decodable

    assert all(decodable(ts) for ts in STORABLE) and len(STORABLE) == 16


def test_a_peer_configured_to_anonymize_gets_its_instances_anonymized(scp, tmp_path):
    client, config = scp
    path = save(make_ct(PatientName="Planted^Marker", PatientID="PLANTED-ID"), tmp_path / "phi.dcm")
    assert send_raw(config, path, ae_title="ANONSCU") == 0xB000  # warning: coercion of data elements
    (row,) = client.get("/dicom").json()["items"]
    assert "Planted" not in json.dumps(row) and "PLANTED" not in json.dumps(row)
    tags = client.get("/tags", params={"id": row["id"]}).text
    assert "Planted" not in tags and "PLANTED-ID" not in tags
    assert send_raw(config, path, ae_title="ANONSCU") == 0xB000  # again: the same anonymized instance
    assert stored_count(client) == 1


def test_ingest_warnings_are_c_store_warning_statuses(scp, tmp_path):
    """Stored with an ingest warning: the C-STORE answer is the matching warning (PS3.4 Table
    B.2-1), its Error Comment the warning (they were all answered Success before)."""
    import numpy as np

    client, config = scp

    def edited(name: str, ds: Dataset, edit) -> Path:
        path = save(ds, tmp_path / name)
        path.write_bytes(edit(path.read_bytes()))
        return path

    def zz(raw: bytes) -> bytes:  # a zero-length (0008,0050) of VR ZZ: read as UN
        at = raw.index(b"\x08\x00\x60\x00CS")
        return raw[:at] + b"\x08\x00\x50\x00ZZ\x00\x00" + raw[at:]

    short = make_ct(np.zeros((8, 8), np.int16))
    short.PixelData = short.PixelData[:64]  # half the pixels (0028,0010) Rows x (0028,0011) Columns call for
    cases = {
        edited("un.dcm", make_ct(np.zeros((4, 4), np.int16)), zz): 0xB000,  # coercion of data elements
        edited("stray.dcm", make_ct(np.zeros((4, 4), np.int16)), lambda raw: raw + b"\xfe\xff\xdd\xe0" + bytes(4)): 0xB006,
        save(short, tmp_path / "short.dcm"): 0xB007,  # data set does not match SOP class
    }  # fmt: skip
    for path, expected in cases.items():
        assert (path.name, send_raw(config, path)) == (path.name, expected)
    assert stored_count(client) == 3
    assert send_raw(config, save(make_ct(), tmp_path / "plain.dcm")) == 0x0000


def test_a_duplicate_is_success_and_stored_once(scp, tmp_path):
    client, config = scp
    path = save(make_ct(), tmp_path / "one.dcm")
    assert send_raw(config, path) == 0x0000
    assert send_raw(config, path) == 0x0000
    assert stored_count(client) == 1


def test_a_data_set_that_is_not_the_requests_instance_is_refused(scp, tmp_path):
    client, config = scp
    ds = make_ct()
    path = save(ds, tmp_path / "other.dcm")
    data = path.read_bytes()  # the file meta (so the C-STORE request) names another instance
    uid = str(ds.SOPInstanceUID).encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    path.write_bytes(data.replace(uid, other, 1))
    assert send_raw(config, path) == 0xA900  # data set does not match SOP class (PS3.4 B.2.3)
    assert stored_count(client) == 0


def hostile(tmp_path: Path, name: str, cut: bool) -> Path:
    """A CT whose data set is cut inside (0010,0010) Patient Name's value, or whose Patient
    Name declares ~4 GiB (implicit VR: a 4-byte length)."""
    ds = make_ct(PatientName="Cut^Here")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True, implicit_vr=True)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x10\x00\x10\x00", 132 + 12)  # (0010,0010) in the data set, after the file meta
    if cut:
        data = data[: at + 8 + 3]
    else:
        data[at + 4 : at + 8] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("cut", [True, False], ids=["truncated", "huge-length"])
def test_hostile_data_sets_get_a_failure_status_and_the_scp_goes_on(scp, tmp_path, cut):
    client, config = scp
    status = send_raw(config, hostile(tmp_path, "hostile.dcm", cut))
    assert status == 0xC000  # cannot understand
    assert stored_count(client) == 0 and echo_works(config)
    assert not any((config.blob_dir / ".tmp").glob("*.dcm"))


def test_a_peer_dropping_mid_transfer_leaves_nothing(scp, tmp_path, monkeypatch):
    """Half of a C-STORE's data set is sent, then the connection is cut (as when storescu is
    killed): the partly received file is removed, nothing is stored, the SCP goes on."""
    import tempfile
    from io import BytesIO

    from pydicom.filewriter import dcmwrite
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    client, config = scp
    received = tmp_path / "received"  # where pynetdicom writes the data sets it receives
    received.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(received))
    import numpy as np

    ds = make_ct(np.zeros((1024, 1024), dtype=np.int16))  # 2 MiB of pixel data
    body = BytesIO()
    dcmwrite(body, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    with association(config, [(ds.SOPClassUID, "1.2.840.10008.1.2.1")]) as assoc:
        request = C_STORE()
        request.MessageID, request.Priority = 1, 2
        request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        request.DataSet = BytesIO(body.getvalue())
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        context = assoc.accepted_contexts[0].context_id
        pdus = list(message.encode_msg(context, assoc.acceptor.maximum_length))
        for pdu in pdus[: len(pdus) // 2]:
            assoc.dul.send_pdu(pdu)
        assert wait_for(lambda: any(p.stat().st_size > 100_000 for p in received.iterdir()))
        assert client.get("/dicom").status_code == 200  # HTTP is served while the association is mid-transfer
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)  # the peer is gone, no A-ABORT
        assoc.dul.socket.socket.close()
        assoc.kill()
    assert wait_for(lambda: not any(received.iterdir()))  # the partial data set is removed
    assert stored_count(client) == 0 and echo_works(config)
    assert not any((config.blob_dir / ".tmp").glob("*.dcm"))


def test_a_burst_of_1000_instances_over_4_parallel_associations_is_stored_completely(tmp_path):
    """Four storescu at once, 250 small CTs each, into the worker processes (the default pool)."""
    import numpy as np

    config = dimse_config(tmp_path, PEERS, DICOMSVC_WORKERS="2")
    folders = [tmp_path / f"burst{n}" for n in range(4)]
    pixels = np.arange(64, dtype=np.int16).reshape(8, 8)
    study = generate_uid()
    for n, folder in enumerate(folders):
        series = generate_uid()
        for i in range(250):
            save(make_ct(pixels, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1), folder / f"{i}.dcm")
    with TestClient(create_app(config)) as client:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(lambda f: dcmtk("storescu", config, "-v", "+sd", after=(str(f),), timeout=600), folders))
        seconds = time.monotonic() - started
        for result in done:
            output = result.stdout + result.stderr
            assert result.returncode == 0 and output.count("Received Store Response (Success)") == 250, output[-2000:]
        stats = client.get("/stats").json()
        assert stats["instances"] == 1000, stats
        series = qido(client, f"studies/{study}/series")
        assert sorted(r["00201209"]["Value"][0] for r in series) == [250] * 4  # Number of Series Related Instances
    print(f"1000 instances over 4 associations in {seconds:.1f} s ({1000 / seconds:.0f}/s)")


def test_shutdown_with_an_association_open_does_not_hang(tmp_path):
    config = dimse_config(tmp_path, PEERS)
    client = TestClient(create_app(config))
    client.__enter__()
    with association(config, [("1.2.840.10008.1.1", "1.2.840.10008.1.2")]) as assoc:
        started = time.monotonic()
        client.__exit__(None, None, None)  # the app stops while the association is established
        assert time.monotonic() - started < 30  # a liveness bound: it was aborted, not waited for
        assert wait_for(lambda: not assoc.is_established)


def test_orthanc_pushes_a_study_to_our_scp(tmp_path):
    """Orthanc (Debian's) as a sender: its REST /modalities/{name}/store C-STOREs a study here."""
    import sys

    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        import servers
    finally:
        sys.path.pop(0)
    binary = servers.orthanc_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Orthanc is not installed (.ci/run installs Debian's orthanc)")
        pytest.skip("Orthanc is not installed")
    config = dimse_config(tmp_path, [*PEERS, {"ae_title": "ORTHANC", "host": "127.0.0.1", "user": "orthanc"}])
    files = two_studies(tmp_path)[:6]  # one study
    work = tmp_path / "orthanc"
    work.mkdir()
    http_port = free_port()
    cfg_path = servers.write_orthanc_config(work, http_port)
    cfg = json.loads(cfg_path.read_text())
    cfg |= {"DicomServerEnabled": True, "DicomPort": free_port(), "DicomAet": "ORTHANC",
            "DicomModalities": {"dicomsvc": [config.ae_title, "127.0.0.1", config.dimse_port]}}  # fmt: skip
    cfg_path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME")}
    base = f"http://127.0.0.1:{http_port}"
    orthanc, _ = servers.launch("orthanc", [binary, str(cfg_path)], work, env, work / "orthanc.log", base + "/system")
    try:
        with TestClient(create_app(config)) as client:
            with httpx.Client(base_url=base, timeout=60, trust_env=False) as rest:
                studies = {rest.post("/instances", content=p.read_bytes()).json()["ParentStudy"] for p in files}
                (study,) = studies
                pushed = rest.post("/modalities/dicomsvc/store", content=study)
                assert pushed.status_code == 200, pushed.text
            rows = client.get("/dicom").json()["items"]
            assert sorted(r["SOPInstanceUID"] for r in rows) == sorted(str(dcmread(p).SOPInstanceUID) for p in files)
            assert {r["uploaded_by"] for r in rows} == {"orthanc"}
    finally:
        orthanc.stop()


def test_a_data_set_growing_past_the_upload_limit_ends_the_association(tmp_path, monkeypatch):
    """DICOMSVC_MAX_UPLOAD_BYTES holds for C-STORE while it is received: the association is
    aborted, the partial file removed, nothing stored; the SCP goes on."""
    import tempfile

    import numpy as np

    received = tmp_path / "received"
    received.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(received))
    config = dimse_config(tmp_path, PEERS, DICOMSVC_MAX_UPLOAD_BYTES=str(1 << 20))
    path = save(make_ct(np.zeros((1024, 1024), dtype=np.int16)), tmp_path / "big.dcm")  # 2 MiB
    with TestClient(create_app(config)) as client:
        with association(config, [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")]) as assoc:
            status = assoc.send_c_store(path)
            assert "Status" not in status  # no answer: the association ended
            assert wait_for(lambda: not assoc.is_established)
        assert wait_for(lambda: not any(received.iterdir()))
        assert stored_count(client) == 0 and echo_works(config)
        small = save(make_ct(), tmp_path / "small.dcm")
        assert send_raw(config, small) == 0x0000


def test_a_pdu_declaring_gigabytes_ends_the_connection_unread(scp):
    """Anyone can open a connection: an A-ASSOCIATE-RQ whose header declares ~2 GiB, then data,
    is cut off once it is longer than any PDU we take, not read into memory; the SCP goes on."""
    _, config = scp
    sent = 0
    with socket.create_connection(("127.0.0.1", config.dimse_port), timeout=30) as peer:
        chunk = bytes(1 << 20)
        with pytest.raises(OSError):  # BrokenPipeError / ConnectionResetError: the server closed
            peer.sendall(b"\x01\x00" + (0x7FFFFFFF).to_bytes(4, "big"))
            for _ in range(256):  # 256 MiB, were it all read
                peer.sendall(chunk)
                sent += len(chunk)
    assert sent < 64 << 20
    assert echo_works(config)


def test_a_dimse_port_in_use_stops_the_start_with_the_reason(tmp_path):
    from dicomsvc.service import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = dimse_config(tmp_path, PEERS, DICOMSVC_DIMSE_PORT=str(port))
        with pytest.raises(StartupError, match=f"the DICOM port {port} cannot be opened"):
            with TestClient(create_app(config)):
                pass


# GET /destinations (issue 14, "Send and forward": the list, each checked) -----------------------


@pytest.fixture
def stow_service():
    """A stand-in STOW-RS/QIDO-RS service: 200 to the token 'good', 401 otherwise; its base URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path.startswith("/dicom-web/studies") and self.headers.get("Authorization") == "Bearer good"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_get_destinations_lists_each_with_a_check(tmp_path, storescp, stow_service):
    ae, port, _ = storescp
    closed = free_port()
    destinations = {
        "archive": {"type": "dimse", "ae_title": ae, "host": "127.0.0.1", "port": port},
        "gone": {"type": "dimse", "ae_title": "NOBODY", "host": "127.0.0.1", "port": closed},
        "research": {"type": "stowrs", "url": stow_service, "token": "good"},
        "refusing": {"type": "stowrs", "url": stow_service, "token": "s3cret-bad"},
        "down": {"type": "stowrs", "url": f"http://127.0.0.1:{closed}/dicom-web"},
    }
    config = dimse_config(tmp_path, PEERS, destinations, DICOMSVC_DESTINATION_CHECK_TIMEOUT="10")
    with TestClient(create_app(config)) as client:
        answer = client.get("/destinations")
    assert answer.status_code == 200 and "s3cret" not in answer.text
    found = {d["name"]: d for d in answer.json()["destinations"]}
    assert list(found) == list(destinations)
    assert found["archive"] | {"ms": 0} == {
        "name": "archive", "type": "dimse", "ae_title": ae, "host": "127.0.0.1", "port": port,
        "reachable": True, "check": "C-ECHO", "status": "0x0000", "detail": "C-ECHO success", "ms": 0,
    }  # fmt: skip
    assert found["gone"]["reachable"] is False and found["gone"]["status"] is None
    assert found["research"]["reachable"] is True and found["research"]["status"] == 200
    assert found["research"]["token"] is True and found["down"]["token"] is False
    assert found["refusing"]["status"] == 401 and found["refusing"]["detail"] == "the token is refused"
    assert found["down"]["reachable"] is False and found["down"]["check"] == "HTTP"


def test_compressed_instances_go_decompressed_to_peers_that_take_only_uncompressed(tmp_path, storescp):
    """storescp accepts only uncompressed syntaxes by default: a JPEG 2000 and an RLE instance moved
    to it arrive in Explicit VR Little Endian, their pixels those of the stored instance decoded
    (and getscu gets them whole too)."""
    import numpy as np

    ae, port, moved = storescp
    config = dimse_config(tmp_path, PEERS, {"archive": {"type": "dimse", "ae_title": ae, "host": "127.0.0.1", "port": port}})
    names = ["JPEG2000.dcm", "MR_small_RLE.dcm"]
    with TestClient(create_app(config)) as client:
        upload(client, [sample_file(n) for n in names])
        for name in names:
            original = dcmread(sample_file(name))
            keys = ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={original.StudyInstanceUID}",
                    "-k", f"SeriesInstanceUID={original.SeriesInstanceUID}", "-k", f"SOPInstanceUID={original.SOPInstanceUID}"]  # fmt: skip
            got = tmp_path / f"got-{name}"
            got.mkdir()
            done = dcmtk("getscu", config, "-S", *keys, "-od", str(got))
            assert done.returncode == 0, done.stdout + done.stderr
            for old in moved.iterdir():
                old.unlink()
            done = dcmtk("movescu", config, "-S", "-aem", ae, *keys)
            assert done.returncode == 0, done.stdout + done.stderr
            for folder in (got, moved):
                (received,) = [dcmread(p) for p in folder.iterdir()]
                assert received.SOPInstanceUID == original.SOPInstanceUID
                assert np.array_equal(received.pixel_array, original.pixel_array)
            (received,) = [dcmread(p) for p in moved.iterdir()]
            assert received.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def test_associations_past_the_limit_are_rejected_transiently(tmp_path):
    config = dimse_config(tmp_path, PEERS, DICOMSVC_DIMSE_MAX_ASSOCIATIONS="1")
    with TestClient(create_app(config)):
        with association(config, [("1.2.840.10008.1.1", "1.2.840.10008.1.2")]):
            done = dcmtk("echoscu", config, "-v")
            output = done.stdout + done.stderr
            assert "Association Rejected" in output and "Local Limit Exceeded" in output, output
        assert echo_works(config)  # the first one released: room again


def test_dimse_requests_and_associations_are_counted(scp, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    client, config = scp

    def counts() -> dict:
        text = client.get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith("dicomsvc_dimse")}  # fmt: skip

    before = counts()
    assert echo_works(config)
    dcmtk("echoscu", config, "-v", ae="STRANGER")
    path = save(make_ct(), tmp_path / "one.dcm")
    assert send_raw(config, path) == 0x0000
    assert send_raw(config, hostile(tmp_path, "cut.dcm", cut=True)) == 0xC000
    findscu(config, tmp_path / "find", "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    dcmtk("movescu", config, "-S", "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3")
    after = counts()

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    requests = "dicomsvc_dimse_requests_total"
    assert delta(requests, service="C-ECHO", status="success") == 1
    assert delta(requests, service="C-STORE", status="success") == 1 and delta(requests, service="C-STORE", status="failure") == 1
    assert delta(requests, service="C-FIND", status="success") == 1
    assert delta(requests, service="C-MOVE", status="failure") == 1
    assert delta("dicomsvc_dimse_associations_total", result="rejected") == 1
    assert delta("dicomsvc_dimse_associations_total", result="accepted") == 5
