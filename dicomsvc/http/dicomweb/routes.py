"""Every route under ``/dicomweb`` (PS3.18), one plain list app.py mounts: thin handlers only.

Paths and who serves what: README-paths.md in this folder.
"""

from starlette.routing import Route

routes: list[Route] = []
