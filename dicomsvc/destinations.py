"""``GET /destinations``: the configured destinations (DICOMSVC_NETWORK_CONFIG), each checked.

A ``dimse`` destination is asked for a C-ECHO (``dicomsvc.dimse.echo``, pynetdicom in an I/O
thread); a ``stowrs`` one is asked a QIDO-RS search (``GET {url}/studies?limit=1``, PS3.18
§10.6) with its bearer token: any HTTP answer below 500 means reachable (401/403: it is there
but refuses the token). All within DICOMSVC_DESTINATION_CHECK_TIMEOUT seconds, all at once.
Tokens never appear in the answer.
"""

import asyncio
import time
import urllib.error
import urllib.request

from . import tasks
from .netconfig import Destination
from .service import Service


async def listing(svc: Service) -> dict:
    destinations = svc.config.network_config.destinations
    checks = await asyncio.gather(*(_check(svc, d) for d in destinations))
    return {"destinations": [_public(d) | check for d, check in zip(destinations, checks)]}


def _public(d: Destination) -> dict:
    if d.type == "dimse":
        return {"name": d.name, "type": d.type, "ae_title": d.ae_title, "host": d.host, "port": d.port}
    return {"name": d.name, "type": d.type, "url": d.url, "token": d.token is not None}


async def _check(svc: Service, d: Destination) -> dict:
    timeout = svc.config.destination_check_timeout
    if d.type == "dimse":
        return await svc.io(tasks.dimse_echo, svc.config.ae_title, d.ae_title, d.host, d.port, timeout)
    return await svc.io(check_stowrs, d.url, d.token, timeout)


def check_stowrs(url: str, token: str | None, timeout: float) -> dict:
    """One QIDO-RS request to the service the STOW-RS URL belongs to."""
    request = urllib.request.Request(f"{url}/studies?limit=1", headers={"Accept": "application/dicom+json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"reachable": False, "check": "HTTP", "status": None, "detail": f"no answer ({type(reason).__name__})",
                "ms": round(1000 * (time.monotonic() - started), 1)}  # fmt: skip
    detail = {401: "the token is refused", 403: "the token is refused"}.get(status, f"HTTP {status}")
    return {"reachable": status < 500, "check": "HTTP", "status": status, "detail": detail,
            "ms": round(1000 * (time.monotonic() - started), 1)}  # fmt: skip
