"""The fork server's last import (``dicomsvc.workers`` puts it at the end of the preload list):
everything the workers share is loaded by now, so the library code the fork server ran only
to load it leaves its resident set (``forkserver.release_library_pages``).

Importing it anywhere but in the fork server does nothing.
"""

from .forkserver import _in_fork_server, release_library_pages

if _in_fork_server():
    release_library_pages()
