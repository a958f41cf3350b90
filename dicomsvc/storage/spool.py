"""Upload spools: a folder per request under the data directory's ``spool/``.

Kept across restarts (a background job's input lives here until the job is done),
unlike ``blobs/.tmp``, which is cleared at every start.
"""

import shutil
from pathlib import Path

import shortuuid


def new_spool(root: Path) -> Path:
    folder = root / shortuuid.uuid()
    folder.mkdir(parents=True)
    return folder


def remove_spool(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
