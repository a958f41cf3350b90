"""DICOM networking (DIMSE, PS3.7/PS3.8): the SCP, a layer beside ``dicomsvc.http``.

``running(svc)`` starts the SCP for as long as the app runs when ``DICOMSVC_DIMSE_PORT`` is
set; pynetdicom (and through it pydicom) is imported only then, so a server without the
port keeps its memory (``dicomsvc.tasks``). ``scp`` holds the association handlers,
``query`` the identifiers against the index.
"""

import contextlib
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def running(svc) -> AsyncIterator[None]:
    """Serve DICOM associations on DICOMSVC_DIMSE_PORT while the block runs (nothing when it is
    unset); at its end, associations are aborted and ingests under way finish first."""
    if svc.config.dimse_port is None:
        yield
        return
    from .scp import Scp

    scp = Scp(svc)
    await scp.start()
    try:
        yield
    finally:
        await scp.stop()
