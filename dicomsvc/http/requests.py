"""Small HTTP helpers shared by the handlers in app.py: bodies, JSON, ETags, base URLs."""

import json
import re

from starlette.requests import Request

from ..errors import BadRequest, TooLarge

MAX_JSON_BYTES = 1 << 20
ETAGS = re.compile(r'(?:W/)?("[^"]*")')  # the quoted tags in If-None-Match


async def read_json_object(request: Request, limit: int = MAX_JSON_BYTES) -> dict:
    """The request body as a JSON object; 400 if it is not one, 413 past ``limit`` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"JSON body larger than {limit} bytes")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header matches ``etag`` (weak comparison, RFC 9110)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag == bare for tag in ETAGS.findall(if_none_match))  # quoted: commas inside are fine


def base_url(request: Request) -> str:
    """The service's own absolute URL, as the client reached it (for Location and links)."""
    return str(request.base_url).rstrip("/")


async def peek_body(request: Request, size: int) -> tuple[Request, bytes]:
    """The first ``size`` bytes of the body (fewer if it is shorter), and a request that
    still reads the whole body: what was read is handed back first."""
    messages, head = [], b""
    while len(head) < size:
        message = await request.receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        head += message.get("body", b"")
        if not message.get("more_body", False):
            break

    async def receive() -> dict:
        return messages.pop(0) if messages else await request.receive()

    return Request(request.scope, receive), head[:size]
