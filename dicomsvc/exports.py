"""Dataset export for ML (POST /datasets/{dataset}/export): a background job writing the matched
studies' instances as files plus ``manifest.csv``; ``GET /jobs/{job}/result`` streams them as a ZIP.

The job is an ordinary ``job`` row with one item, the export's parameters (``{"export": ...}``);
the job runner (``dicomsvc.jobs``) hands such an item to ``run`` instead of the ingest. ``run``
walks the dataset's instances a page at a time (``storage.datasets.export_page``, keyset paging),
each page written by a worker (``exportfiles.export_chunk``) under ``<data>/exports/<job>/files``,
its manifest rows appended to ``manifest.csv`` as they come: memory stays flat in the export's
size. A job run again (its replica died) starts its export again from the start.

The ZIP is made while it is sent (``zip_stream``: stored members with data descriptors, so
nothing is buffered but the piece being sent): one folder per study and series,
``<study>/<series>/<sop>.dcm|.npy|.png``, and ``manifest.csv`` (one row per instance; every cell
through ``datasets.escape_formula``, so a spreadsheet opening it evaluates nothing).
"""

import csv
import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import shortuuid

from . import tasks
from .config import Config
from .datasets import GEOMETRY, escape_formula
from .errors import BadRequest, DicomSvcError, NotFound
from .service import Service
from .storage import datasets as store
from .storage import jobs as job_rows

KINDS = ("npy", "png", "dicom")
PAGE = 64  # instances per worker task (one trip; well inside DICOMSVC_WORKER_TIMEOUT)
READ = 1 << 20
HEAD = ("path_dicom", "path_npy", "path_png", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
        "Modality", *GEOMETRY, "csv_row", "key")  # fmt: skip


class NotDone(DicomSvcError):
    """The job's result asked for before the job is done."""

    status, code = 409, "not_done"


def result_dir(config: Config, job_id: str) -> Path:
    return config.data_dir / "exports" / job_id


def parse_request(body: Mapping) -> dict:
    """The export's parameters from its JSON body: include, rescale, anonymize, filter."""
    unknown = set(body) - {"include", "rescale", "anonymize", "filter"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    include = body.get("include", list(KINDS))
    if not isinstance(include, list) or not include or any(k not in KINDS for k in include):
        raise BadRequest(f"include must be a non-empty list of {', '.join(KINDS)}")
    flags = {}
    for name in ("rescale", "anonymize"):
        if not isinstance(body.get(name, False), bool):
            raise BadRequest(f"{name} must be true or false")
        flags[name] = body.get(name, False)
    chosen = body.get("filter", {})
    if not isinstance(chosen, dict) or any(k not in store.EXPORT_FILTERS or not isinstance(v, str) for k, v in chosen.items()):
        raise BadRequest(f"filter must be an object of {', '.join(store.EXPORT_FILTERS)} (text values)")
    return {"include": sorted(set(include)), **flags, "filter": chosen}


async def submit(svc: Service, dataset_id: str, body: Mapping, owner: str | None, user: str | None) -> str:
    """Queue the export of a dataset (``owner``: one of theirs, over their instances): its job id."""
    dataset = await store.get(svc.db, dataset_id, owner)
    if dataset is None:
        raise NotFound("no such dataset")
    spec = parse_request(body)
    if spec["anonymize"] and not dataset["anonymized"]:
        raise BadRequest(
            "this dataset was joined to studies as stored: to export anonymized data, post the CSV with "
            "anonymize=true over studies stored anonymized (its rows then hold pseudonyms only)"
        )
    spec |= {"dataset": dataset_id, "owner": owner, "columns": dataset["columns"]}
    job_id = shortuuid.uuid()
    await job_rows.insert_job(svc.db, job_id, [(0, json.dumps({"export": spec}), "pending", None)], None, user)
    svc.wakeup.set()
    return job_id


def is_export(item: str) -> bool:
    """Whether a job item (its JSON) is an export's rather than a file to ingest."""
    return item.startswith('{"export"')


async def run(svc: Service, job_id: str, seq: int, item: str) -> None:
    """Write the export of the job's item, then record the item done (under the job's lease)."""
    spec = json.loads(item)["export"]
    folder = result_dir(svc.config, job_id)
    await svc.io(_fresh, folder)
    columns = spec["columns"]
    await svc.io(_append, folder / "manifest.csv", [[*HEAD, *columns]])
    after, exported, failed = 0, 0, 0
    while page := await store.export_page(svc.db, spec["dataset"], after, PAGE, spec["owner"], spec["filter"]):
        after = page[-1]["pk"]
        entries = await svc.cpu(tasks.export_chunk, svc.config, str(folder / "files"), page, spec["include"], spec["rescale"])
        lines = []
        for row, entry in zip(page, entries):
            if "error" in entry:
                failed += 1
                continue
            exported += 1
            clinical = json.loads(row["clinical"])
            paths, values = entry["paths"], entry["values"]
            cells = [paths.get("dicom", ""), paths.get("npy", ""), paths.get("png", ""),
                     *(values[name] for name in HEAD[3:7]), *(values[name] for name in GEOMETRY),
                     str(row["row_number"]), row["key_value"], *(clinical.get(c, "") for c in columns)]  # fmt: skip
            lines.append([escape_formula(c) for c in cells])
        await svc.io(_append, folder / "manifest.csv", lines)
    result = {"file": "export.zip", "status": "created", "id": job_id,
              "detail": f"{exported} instance(s) exported, {failed} left out"}  # fmt: skip
    await job_rows.record_results(svc.db, job_id, [(seq, "created", json.dumps(result))], svc.replica,
                                  svc.config.job_lease_seconds)  # fmt: skip


def _fresh(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "files").mkdir(parents=True)


def _append(path: Path, rows: list[list[str]]) -> None:
    with open(path, "a", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows(rows)


async def result(svc: Service, job_id: str, owner: str | None) -> Path:
    """GET /jobs/{job}/result: the export's folder, once its job is done (``owner``: their job)."""
    job = await job_rows.get_job(svc.db, job_id, owner)
    folder = result_dir(svc.config, job_id)
    if job is None or not await svc.io((folder / "manifest.csv").exists):
        raise NotFound("no export with that job id")
    if job["status"] != "done":
        raise NotDone(f"the export's job is {job['status']}, not done (GET /jobs/{{job}} says how it goes)")
    return folder


class _Pipe(io.RawIOBase):
    """What ``zipfile`` writes to: not seekable (so it writes data descriptors), emptied as sent."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.pending += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.pending)
        self.pending.clear()
        return out


def zip_stream(folder: Path) -> Iterator[bytes]:
    """The export as a ZIP, made while it is read (stored members: PNG, and most pixel data,
    gain little from deflate): ``manifest.csv``, then the files folder by folder."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, name in _members(folder):
            big = path.stat().st_size > 0x7FFFFFFF
            with open(path, "rb") as src, archive.open(name, "w", force_zip64=big) as dst:
                while chunk := src.read(READ):
                    dst.write(chunk)
                    if len(pipe.pending) >= READ:
                        yield pipe.take()
            yield pipe.take()
    yield pipe.take()


def _members(folder: Path) -> Iterator[tuple[Path, str]]:
    yield folder / "manifest.csv", "manifest.csv"
    files = folder / "files"
    for top, dirs, names in os.walk(files):
        dirs.sort()
        for name in sorted(names):
            path = Path(top) / name
            yield path, path.relative_to(files).as_posix()
