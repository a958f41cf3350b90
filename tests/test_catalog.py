"""Finding and managing what is stored: GET /dicom, GET /dicom/{id}, DELETE, /stats."""

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dicomfiles import blob_files, blob_plaintext, make_ct, sample_file, unlink_blob

DICOM = {"content-type": "application/dicom"}


def post_ct(client, i: int, **elements) -> str:
    buf = io.BytesIO()
    make_ct(np.full((8, 8), i, np.int16), **elements).save_as(buf, enforce_file_format=True)
    response = client.post("/dicom", content=buf.getvalue(), headers=DICOM)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def catalog(client):
    """Nine instances: 3 patients x 3 dates, two modalities, one study per patient."""
    ids = {}
    studies = {p: f"1.2.826.0.1.3680043.8.498.{p}" for p in range(3)}
    for p in range(3):
        for d, date in enumerate(("20200101", "20200615", "20211231")):
            ids[(p, d)] = post_ct(
                client,
                p * 10 + d,
                PatientID=f"P{p}",
                StudyDate=date,
                Modality="MR" if d == 2 else "CT",
                AccessionNumber=f"ACC{p}{d}",
                StudyInstanceUID=studies[p],
            )
    return ids, studies


def ids_of(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_search_filters_and_newest_first(client, catalog):
    ids, studies = catalog
    newest_first = list(reversed(list(ids.values())))
    assert ids_of(client.get("/dicom")) == newest_first
    assert ids_of(client.get("/dicom", params={"PatientID": "P1"})) == [ids[(1, 2)], ids[(1, 1)], ids[(1, 0)]]
    assert ids_of(client.get("/dicom", params={"Modality": "MR"})) == [ids[(2, 2)], ids[(1, 2)], ids[(0, 2)]]
    assert ids_of(client.get("/dicom", params={"AccessionNumber": "ACC01"})) == [ids[(0, 1)]]
    assert ids_of(client.get("/dicom", params={"StudyInstanceUID": studies[2], "Modality": "CT"})) == [
        ids[(2, 1)], ids[(2, 0)],
    ]  # fmt: skip
    item = client.get("/dicom", params={"PatientID": "P0", "limit": 1}).json()["items"][0]
    assert set(item) >= {"id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"}


@pytest.mark.parametrize(
    ("dates", "expected"),
    [("20200615", {1}), ("20200101-20200615", {0, 1}), ("20200301-", {1, 2}), ("-20200615", {0, 1})],
)
def test_study_date_exact_and_ranges(client, catalog, dates, expected):
    ids, _ = catalog
    found = set(ids_of(client.get("/dicom", params={"StudyDate": dates})))
    assert found == {ids[(p, d)] for p in range(3) for d in expected}


def test_paging(client, catalog):
    ids, _ = catalog
    pages, offset = [], 0
    while offset is not None:
        body = client.get("/dicom", params={"limit": 4, "offset": offset}).json()
        pages.append([item["id"] for item in body["items"]])
        offset = body["next_offset"]
    assert [len(p) for p in pages] == [4, 4, 1]
    assert sum(pages, []) == list(reversed(list(ids.values())))


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"offset": "-1"}, {"StudyDate": "2020"},
     {"StudyDate": "-"}, {"PatientName": "x"}],
)  # fmt: skip
def test_bad_search_parameters_are_400(client, params):
    response = client.get("/dicom", params=params)
    assert response.status_code == 400 and response.json()["error"] == "bad_request"


def test_metadata(client):
    data = sample_file("CT_small.dcm").read_bytes()
    instance_id = client.post("/dicom", content=data, headers=DICOM).json()["id"]
    meta = client.get(f"/dicom/{instance_id}").json()
    assert meta["id"] == instance_id and meta["Modality"] == "CT"
    assert (meta["Rows"], meta["Columns"], meta["NumberOfFrames"], meta["BitsAllocated"]) == (128, 128, 1, 16)
    assert meta["PhotometricInterpretation"] == "MONOCHROME2"
    assert meta["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert meta["PatientSex"] == "O" and meta["bytes"]["dicom"] == len(data) and meta["bytes"]["png"] > 0
    assert meta["anonymized"] is False and meta["anonymized_from"] is None
    copy = client.post(f"/dicom/{instance_id}/anonymize").json()["id"]
    copied = client.get(f"/dicom/{copy}").json()
    assert copied["anonymized"] is True and copied["anonymized_from"] == instance_id
    assert client.get("/dicom/AAAAAAAAAAAAAAAAAAAAAA").status_code == 404


def test_delete_one_leaves_nothing(client, data_dir):
    keep = post_ct(client, 1)
    gone = post_ct(client, 2)
    client.get("/image", params={"id": gone})
    before = {p.name for p in blob_files(data_dir)}
    assert client.delete(f"/dicom/{gone}").status_code == 204
    assert client.get(f"/dicom/{gone}").status_code == 404
    assert client.get("/image", params={"id": gone}).status_code == 404
    assert client.get("/tags", params={"id": gone}).status_code == 404
    assert client.delete(f"/dicom/{gone}").status_code == 404
    after = {p.name for p in blob_files(data_dir)}
    assert before - after == {f"{gone}.dcm", f"{gone}.png"}
    assert not [p for p in data_dir.rglob(f"{gone}*")]
    assert client.get(f"/dicom/{keep}").status_code == 200
    from indexdb import index

    with index(client.app.state.svc.config) as db:
        orphans = db.execute("SELECT COUNT(*) FROM dicom_tag WHERE dicom_pk NOT IN (SELECT pk FROM dicom)")
        assert orphans.fetchone()[0] == 0


def test_delete_a_study_needs_a_filter(client, catalog, data_dir):
    ids, studies = catalog
    refused = client.delete("/dicom")
    assert refused.status_code == 400 and "filter" in refused.json()["detail"]
    deleted = client.delete("/dicom", params={"StudyInstanceUID": studies[1]})
    assert deleted.json() == {"deleted": 3}
    assert set(ids_of(client.get("/dicom"))) == {ids[(p, d)] for p in (0, 2) for d in range(3)}
    assert len([p for p in blob_files(data_dir) if ".tmp" not in p.parts]) == 12


def test_stats(client, catalog):
    post_ct(client, 99, PatientID="P0", Modality="US")
    stats = client.get("/stats").json()
    assert (stats["instances"], stats["studies"], stats["patients"]) == (10, 4, 3)
    assert stats["modalities"] == {"CT": 6, "MR": 3, "US": 1}
    assert stats["bytes"] > 0 and stats["earliest"] <= stats["latest"]


# Reads racing a DELETE of the same instance (issue 9) -----------------------------------------

READS = [
    ("GET", "/image?id={id}"),
    ("GET", "/image?id={id}&width=16&format=jpeg"),
    ("GET", "/tags?id={id}&format=dicomjson"),
    ("GET", "/dicom/{id}/pixels"),
    ("GET", "/dicom/{id}/file"),
    ("GET", "/dicom/{id}/bulk/7FE00010"),
    ("POST", "/dicom/{id}/anonymize"),
]


@pytest.mark.parametrize("method, url", READS)
def test_a_read_whose_files_vanish_after_the_lookup_is_404(client, data_dir, monkeypatch, method, url):
    """The DELETE's unlink lands between the row's lookup and the file's opening."""
    from dicomsvc.storage import instances

    instance_id = post_ct(client, 1)
    stored = [p for p in blob_files(data_dir) if p.name.startswith(instance_id)]

    def then_unlink(real):
        async def lookup_then_unlink(db, wanted, *owner):
            record = await real(db, wanted, *owner)
            for path in stored:
                unlink_blob(path)
            return record

        return lookup_then_unlink

    for lookup in ("get_instance", "get_rendering_row"):  # the whole row; what GET /image needs of it
        monkeypatch.setattr(instances, lookup, then_unlink(getattr(instances, lookup)))
    response = client.request(method, url.format(id=instance_id))
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("url", [u for m, u in READS if m == "GET" and "image?id={id}&" in u or "pixels" in u or "bulk" in u])
def test_a_read_whose_file_vanishes_after_its_header_was_read_is_404(client, data_dir, monkeypatch, url):
    """Frames are read by reopening the file: one gone by then looked like undecodable data (415)."""
    from dicomsvc import retrieve

    instance_id = post_ct(client, 1)
    (dcm,) = [p for p in blob_files(data_dir) if p.name == f"{instance_id}.dcm"]
    real = retrieve.read

    def read_then_unlink(path):
        parsed = real(path)
        unlink_blob(dcm)
        return parsed

    monkeypatch.setattr(retrieve, "read", read_then_unlink)
    response = client.get(url.format(id=instance_id))
    assert response.status_code == 404, response.text
    assert not list(data_dir.rglob("*.renderings/*"))


@pytest.mark.parametrize("url", ["/dicom/{id}/file", "/dicom/{id}/bulk/7FE00010"])
def test_a_file_deleted_once_its_answer_is_under_way_is_sent_whole(client, data_dir, monkeypatch, url):
    from dicomsvc.http import instances

    instance_id = post_ct(client, 1)
    (dcm,) = [p for p in blob_files(data_dir) if p.name == f"{instance_id}.dcm"]
    whole = blob_plaintext(dcm)
    name = "dicom_file" if url.endswith("/file") else "bulk"
    real = getattr(instances, name)

    async def then_unlink(*args):
        answer = await real(*args)
        unlink_blob(dcm)
        return answer

    monkeypatch.setattr(instances, name, then_unlink)
    response = client.get(url.format(id=instance_id))
    assert response.status_code == 200
    if url.endswith("/file"):
        assert response.content == whole
    else:
        assert response.content == np.full((8, 8), 1, np.int16).tobytes()


def test_a_rendering_made_while_its_instance_is_deleted_leaves_no_folder(client, data_dir, monkeypatch):
    """The DELETE commits and removes the renderings folder after the worker read the file
    and before it kept the rendering: that request answers 404 and takes the folder away."""
    from dicomsvc.imaging import renderings

    instance_id = post_ct(client, 1)
    real = renderings.render
    deleted = []

    def render_then_delete(*args, **kwargs):
        body = real(*args, **kwargs)
        deleted.append(client.delete(f"/dicom/{instance_id}").status_code)  # from the worker thread
        return body

    monkeypatch.setattr(renderings, "render", render_then_delete)
    response = client.get("/image", params={"id": instance_id, "width": 16})
    assert deleted == [204]
    assert response.status_code == 404, response.text
    assert not list(data_dir.rglob(f"{instance_id}*")), list(data_dir.rglob(f"{instance_id}*"))


def test_a_renderings_folder_removed_just_before_the_keep_is_404_not_500(client, data_dir, monkeypatch):
    """The DELETE's removal of the folder lands between its creation and the rename into it."""
    import pathlib

    instance_id = post_ct(client, 1)
    real = pathlib.Path.mkdir

    def mkdir_then_delete(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.name == f"{instance_id}.renderings":
            assert client.delete(f"/dicom/{instance_id}").status_code == 204  # from the worker thread

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir_then_delete)
    response = client.get("/image", params={"id": instance_id, "width": 16})
    assert response.status_code == 404, response.text
    assert not list(data_dir.rglob(f"{instance_id}*"))
    assert not list((data_dir / "blobs" / ".tmp").iterdir())


def test_reads_racing_deletes_are_200_or_404_never_500_or_a_cut_connection(live_server, data_dir):
    """Many readers of every kind on a live server while each instance is deleted under them."""
    import random
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    with httpx.Client(base_url=live_server, timeout=60) as http:

        def one(method: str, url: str) -> None:
            try:
                response = http.request(method, url)
                response.read()
                ok = response.status_code in (200, 201, 404) and (
                    response.status_code != 404 or response.json()["error"] == "not_found"
                )
                outcome = str(response.status_code) if ok else f"bad {response.status_code} {method} {url.split('?')[0]}: {response.text[:300]}"
            except httpx.HTTPError as exc:  # a connection cut after the headers, say
                outcome = type(exc).__name__
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        rng = random.Random(9)
        with ThreadPoolExecutor(6) as pool:
            for i in range(25):
                buf = io.BytesIO()
                make_ct(np.full((64, 64), i, np.int16)).save_as(buf, enforce_file_format=True)
                instance_id = http.post("/dicom", content=buf.getvalue(), headers=DICOM).json()["id"]
                reads = [(m, u.format(id=instance_id)) for m, u in READS for _ in range(3)]
                rng.shuffle(reads)
                futures = [pool.submit(one, m, u) for m, u in reads]
                threading.Event().wait(rng.uniform(0, 0.03))
                assert http.delete(f"/dicom/{instance_id}").status_code == 204
                for future in futures:
                    future.result()
    assert set(outcomes) <= {"200", "201", "404"}, outcomes
    assert outcomes.get("404") and (outcomes.get("200") or outcomes.get("201")), outcomes
    assert not list((data_dir / "blobs").rglob("*.renderings"))  # no rendering outlived its instance


# GET /jobs/{id}?wait= ---------------------------------------------------------------------------


def test_a_request_waiting_for_a_job_is_answered_when_it_ends(client, monkeypatch):
    from dicomsvc import batch, jobs

    gate, waiting = threading.Event(), threading.Event()  # the job held; a request in its wait
    real_run, real_first_of = batch.run, jobs._first_of

    async def held_run(*args, **kwargs):
        await asyncio.to_thread(gate.wait, 60)
        return await real_run(*args, **kwargs)

    async def noted_first_of(*args):
        waiting.set()
        return await real_first_of(*args)

    monkeypatch.setattr(batch, "run", held_run)
    monkeypatch.setattr(jobs, "_first_of", noted_first_of)
    buf = io.BytesIO()
    make_ct(np.full((8, 8), 7, np.int16)).save_as(buf, enforce_file_format=True)
    submitted = client.post("/dicom?async=true", content=buf.getvalue(), headers=DICOM)
    assert submitted.status_code == 202, submitted.text
    url = submitted.json()["status_url"]
    # the wait runs out while the job is held: its status as it is
    early = client.get(url, params={"wait": "0.2"})
    assert early.status_code == 200 and early.json()["status"] in ("queued", "running") and waiting.is_set()
    waiting.clear()
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(client.get, url, params={"wait": "60"})
        assert waiting.wait(30), "the request did not wait"
        assert not later.done()  # held while the job is
        gate.set()
        ended = later.result(timeout=60)
    assert ended.status_code == 200
    assert (ended.json()["status"], ended.json()["created"], ended.json()["processed"]) == ("done", 1, 1)
    waiting.clear()
    again = client.get(url, params={"wait": "60"})  # an ended job answers at once
    assert again.json()["status"] == "done" and not waiting.is_set()
    for bad in ("x", "-1", "61", "nan", "inf", ""):
        refused = client.get(url, params={"wait": bad})
        assert refused.status_code == 400 and refused.json()["error"] == "bad_request", bad
    assert client.get("/jobs/nope", params={"wait": "5"}).status_code == 404


def test_a_progress_poll_leaves_out_the_results(client, import_root):
    for n in range(3):
        make_ct(np.full((8, 8), n, np.int16)).save_as(import_root / f"{n}.dcm", enforce_file_format=True)
    (import_root / "notes.txt").write_text("not DICOM")
    submitted = client.post("/dicom?async=true", json={"path": "."})
    assert submitted.status_code == 202, submitted.text
    url = submitted.json()["status_url"]
    full = client.get(url, params={"wait": "60"}).json()
    assert full["status"] == "done" and len(full["results"]) == 4
    for no in ("false", "0", "no", "off"):
        poll = client.get(url, params={"results": no})
        assert poll.status_code == 200 and poll.json() == {k: v for k, v in full.items() if k != "results"}
        assert poll.json()["processed"] == 4 and poll.json()["created"] == 3 and poll.json()["skipped"] == 1
    assert client.get(url, params={"results": "true"}).json() == full
    assert client.get(url, params={"results": "false", "wait": "1"}).json()["status"] == "done"
    refused = client.get(url, params={"results": "nope"})
    assert refused.status_code == 400 and refused.json()["error"] == "bad_request"
    assert client.get("/jobs/nope", params={"results": "false"}).status_code == 404
