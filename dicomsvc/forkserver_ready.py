"""The fork server's last import (``dicomsvc.workers`` puts it at the end of the preload list):
everything the workers share is loaded by now, and the fork server only forks from here on, so
the library code it ran to load them leaves its resident set (``dicomsvc.libpages``).

Importing it anywhere but in the fork server does nothing.
"""

from . import libpages
from .forkserver import in_fork_server

if in_fork_server():
    libpages.release()
