"""Worker tasks named, not imported: the server process never loads pydicom or numpy.

The pipeline (``dicomsvc.ingest``) and the read side (``dicomsvc.retrieve``) import
pydicom, numpy, Pillow and the decoders: ~35 MB of a process's memory (issue 12: idle
memory counted as PSS summed over the server and its workers). Only the workers need
them (the fork server preloads them once: ``dicomsvc.service.WORKER_MODULES``), so the
server hands a worker a ``Task``, a module's and a function's name, instead of the
function itself: ``await svc.cpu(tasks.ingest_file, config, temp, name, options)``.
It pickles by value (two strings); calling it imports the module (already imported in a
worker) and calls the function. A task run by ``svc.io`` (an I/O thread of the server)
imports its module in the server on first use: memory at rest is what counts.

What a task returns is unpickled in the server, which imports the module defining its
type: results are plain values or types of light modules (``dicomsvc.results``).
tests/test_service.py checks that a started server has none of them imported.
"""

import functools
import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    """The function ``module.name``, looked up when called (so a test's monkeypatch of it is
    seen), its module imported on the first call in a process."""

    module: str
    name: str

    def __call__(self, *args: Any) -> Any:
        _prepare()
        return getattr(importlib.import_module(self.module), self.name)(*args)


def init_worker(max_frame_bytes: int) -> None:
    """Set up a worker (run once in each, under its limits): pydicom kept quiet,
    DICOMSVC_MAX_FRAME_BYTES, and what the pipeline imports, so the first request
    does not pay for it. Here, in a light module, and not in ``dicomsvc.service``: the
    fork server imports the initializer's module, and the service's would bring the
    pool, asyncio and the metrics into every worker (issue 12: memory)."""
    _prepare()
    from . import ingest, retrieve  # noqa: F401
    from .imaging import decode

    decode.set_max_frame_bytes(max_frame_bytes)


@functools.cache
def _prepare() -> None:
    """Once per process, before a task's module is imported: pydicom reads leniently and
    stays quiet, as in the workers (``init_worker``)."""
    from .logs import quiet_pydicom

    quiet_pydicom()


# dicomsvc.ingest (in a worker) -> dicomsvc.results.Ingested
ingest_import = Task("dicomsvc.ingest", "ingest_import")
ingest_path = Task("dicomsvc.ingest", "ingest_path")
ingest_file = Task("dicomsvc.ingest", "ingest_file")
ingest_group = Task("dicomsvc.ingest", "ingest_group")  # single ingests waiting together -> a reply per item

# dicomsvc.datasets, in a worker: a clinical CSV read, joined to the studies and stored -> its summary
create_dataset = Task("dicomsvc.datasets", "create")
export_chunk = Task("dicomsvc.exportfiles", "export_chunk")  # a page of a dataset export's files
original_links = Task("dicomsvc.datasets", "original_links")  # an anonymized dataset's studies stored as they came
ingest_capture = Task("dicomsvc.ingest", "ingest_capture")  # a JPEG or PNG made an SC instance first

# dicomsvc.retrieve, in a worker: bytes, paths, dicts, lists of plain values
render_and_keep = Task("dicomsvc.retrieve", "render_and_keep")
rerender_and_keep = Task("dicomsvc.retrieve", "rerender_and_keep")
write_npy = Task("dicomsvc.retrieve", "write_npy")
dicom_json = Task("dicomsvc.retrieve", "dicom_json")
stored_metadata = Task("dicomsvc.retrieve", "stored_metadata")
write_explicit_le = Task("dicomsvc.retrieve", "write_explicit_le")
decoded_frames = Task("dicomsvc.retrieve", "decoded_frames")
decodable = Task("dicomsvc.retrieve", "decodable")  # bool: a transfer syntax's decoder is installed

# dicomsvc.retrieve in an I/O thread of the server (svc.io): imported there on first use
bulk = Task("dicomsvc.retrieve", "bulk")
frame_source = Task("dicomsvc.retrieve", "frame_source")

# dicomsvc.dimse.echo in an I/O thread (GET /destinations): pynetdicom loaded on first use only
dimse_echo = Task("dicomsvc.dimse.echo", "echo")

# dicomsvc.sending: the anonymized copy of an instance to send, in a worker -> (path, SOP Instance UID, size)
anonymized_copy = Task("dicomsvc.sendfiles", "anonymized_copy")
# dicomsvc.dimse.scu in an I/O thread (sending over DIMSE): pynetdicom loaded on first use only
scu_associate = Task("dicomsvc.dimse.scu", "associate")
scu_store = Task("dicomsvc.dimse.scu", "store")
scu_close = Task("dicomsvc.dimse.scu", "close")
