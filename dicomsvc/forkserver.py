"""The fork server's first import: set up the process every worker is forked from.

``dicomsvc.workers`` starts workers with multiprocessing's "forkserver" method: one
process imports the workers' modules once (numpy, pydicom and its decoders, the
pipeline: ``set_forkserver_preload``) and forks a worker per request, so all the
workers share those pages copy-on-write instead of each importing its own. This
module is the first of that list, so what it does happens before any of them:

* one thread for OpenBLAS/OpenMP/MKL (``workerproc.ONE_THREAD``), set before numpy is
  imported, and inherited by every worker forked from here;
* SIGINT and SIGTERM to the process group are ignored (``workerproc.ignore_stop_signals``):
  the server stops its workers itself, and a fork server killed by them would take its
  workers with it;
* the fork server dies with the server, kill -9 included (``PR_SET_PDEATHSIG``). The
  server starts it from a thread that lives as long as its process
  (``workers._start_fork_server``), since the signal follows the starting *thread*.
  Should the server die before this request takes effect, the fork server still
  leaves: it exits when its "alive" pipe reaches end of file, which happens once the
  server and every worker (each holds a copy, and an idle or new worker leaves when
  its own pipe to the server does) are gone; and no worker can be busy then, since a
  worker forked from here only gets a task after this module ran.

Importing it anywhere but in the fork server does nothing.

``dicomsvc.forkserver_ready`` is the list's last module: when it is imported everything the
workers share is loaded, and the library code the fork server ran only to load it leaves its
resident set (``dicomsvc.libpages``).
"""

import os
import sys

from .workerproc import ONE_THREAD, die_with_parent, ignore_stop_signals

UNUSED = ("requests", "tqdm")  # imported by pydicom.data if installed; never used in a worker


def in_fork_server() -> bool:
    """Whether the module calling this is being imported by ``multiprocessing.forkserver.main``
    (one of the fork server's preloads), not elsewhere."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith(os.path.join("multiprocessing", "forkserver.py")):
            return True
        frame = frame.f_back
    return False


if in_fork_server():
    for _name in ONE_THREAD:
        os.environ.setdefault(_name, "1")
    # pydicom.data imports requests and tqdm when they are installed (the tests install them),
    # to download its test files -- which no worker does: kept out of the fork server, and so
    # of every worker (5 MB of each one's memory, issue 12). ``import requests`` then raises
    # ImportError, as pydicom expects where they are not installed.
    for _name in UNUSED:
        sys.modules.setdefault(_name, None)
    die_with_parent()
    ignore_stop_signals()  # as its workers do (a SIGTERM to the group killing it would kill them)
