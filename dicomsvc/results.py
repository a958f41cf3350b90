"""What worker tasks hand back to the server, in a module the server can import.

Unpickling a result imports the module that defines its type, so the types a task
returns live here, not beside the pipeline: the server process never imports pydicom
or numpy (``dicomsvc.tasks``). ``dicomsvc.ingest`` re-exports them.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DicomSvcError, NotFound


@dataclass(frozen=True)
class Ingested:
    """One stored instance: its id, whether this call stored it (201) or found it (200), and
    its (0008,0016) SOP Class UID and (0008,0018) SOP Instance UID."""

    id: str
    created: bool
    warnings: list[str]
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class Folder:
    """``ingest.ingest_path``'s answer for a path that names a folder of the import root (its
    real path): the server expands it into a batch."""

    real: Path


@contextlib.contextmanager
def deleted_is_404(path: Path | None = None) -> Iterator[None]:
    """The stored file vanished between the row's lookup and its reading: a DELETE of the
    instance got there first. The answer is what it would have been a moment later, 404.

    Readers that reopen ``path`` (a frame's bytes are read on their own) meet a vanished
    file as undecodable data (415, say): with ``path`` given, any such error is a 404 when
    the file is gone (a DELETE unlinks only after its commit). (Here, not in ``retrieve``:
    the server uses it too; ``retrieve`` re-exports it.)"""
    try:
        yield
    except FileNotFoundError:
        raise NotFound("no instance with that id") from None
    except DicomSvcError as exc:
        if path is None or isinstance(exc, NotFound) or path.exists():
            raise
        raise NotFound("no instance with that id") from None
