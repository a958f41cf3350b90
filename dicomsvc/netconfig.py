"""The DICOM network configuration (``DICOMSVC_NETWORK_CONFIG``): a JSON file of peers,
destinations and forwarding rules, read and checked once at start-up.

Shape (README "DICOM networking")::

    {"peers": [{"ae_title": "STORESCU", "host": "127.0.0.1", "anonymize": false, "user": "scanner1"}],
     "destinations": {"pacs": {"type": "dimse", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
                      "research": {"type": "stowrs", "url": "http://127.0.0.1:8042/dicom-web", "token": null}},
     "rules": [{"match": {"Modality": "CT"}, "to": "pacs"}, {"to": "research", "anonymize": true}]}

Peers are the allow-list of the SCP (``dicomsvc.dimse``): the calling AE title and, when
given, the host an association may come from; per peer, whether what it sends is anonymized
on arrival and which user owns it. Destinations name where instances may be sent (a C-MOVE
destination is a ``dimse`` one); rules say what is forwarded where. Everything is checked
here, so a mistake stops the start with a message naming the entry; nothing of a peer's data
is ever in it. Only the standard library: ``dicomsvc.config`` imports this.
"""

import ipaddress
import json
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# PS3.5 §6.2, AE: at most 16 characters of the Default Character Repertoire, no backslash, no
# control characters; leading and trailing spaces are not significant, an all-space value is not one.
AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


class NetworkConfigError(ValueError):
    """The network configuration file is missing or malformed: the message says where."""


def ae_title(value: object, where: str) -> str:
    """An AE title (PS3.5 §6.2 AE VR), trimmed; ValueError naming ``where`` otherwise."""
    if not isinstance(value, str) or not AE_TITLE.fullmatch(value) or not value.strip():
        raise ValueError(f"{where} must be an AE title: 1 to 16 characters, no backslash or control characters (PS3.5 §6.2)")
    return value.strip()


@dataclass(frozen=True)
class Peer:
    """An application entity allowed to associate with the SCP."""

    ae_title: str
    host: str | None = None  # None: from anywhere
    anonymize: bool = False  # its instances are anonymized on arrival
    user: str | None = None  # the owner of what it stores (dicom.uploaded_by)


@dataclass(frozen=True)
class Destination:
    """Where instances may be sent: a DIMSE peer (C-STORE) or a STOW-RS service."""

    name: str
    type: str  # dimse | stowrs
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    url: str | None = None
    token: str | None = field(default=None, repr=False)  # a bearer token: never logged


@dataclass(frozen=True)
class Rule:
    """Forward what ``match``es (keyword -> value; empty: everything) to ``to``."""

    to: str
    match: tuple[tuple[str, str], ...] = ()
    anonymize: bool = False


@dataclass(frozen=True)
class NetworkConfig:
    peers: tuple[Peer, ...] = ()
    destinations: tuple[Destination, ...] = ()
    rules: tuple[Rule, ...] = ()

    def peer(self, calling_ae: str, host: str | None) -> Peer | None:
        """The peer an association from ``calling_ae`` at ``host`` is, or None (rejected)."""
        for peer in self.peers:
            if peer.ae_title == calling_ae.strip() and (peer.host is None or _same_host(peer.host, host)):
                return peer
        return None

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)

    def dimse_destination(self, ae: str) -> Destination | None:
        """The ``dimse`` destination whose AE title is ``ae`` (a C-MOVE Move Destination)."""
        return next((d for d in self.destinations if d.type == "dimse" and d.ae_title == ae.strip()), None)


def _same_host(configured: str, actual: str | None) -> bool:
    """Whether the peer address ``actual`` is the configured host: an address compared as one
    (``::ffff:10.0.0.5`` is ``10.0.0.5``), a name resolved now (each association: a scanner's
    address may change) to every address it has; a name that does not resolve matches nothing."""
    if actual is None:
        return False
    try:
        peer = _address(actual)
    except ValueError:
        return False
    try:
        return _address(configured) == peer
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(configured, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return any(_address(info[4][0]) == peer for info in found)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def load(path: Path, setting: str) -> NetworkConfig:
    """Read and check the file ``setting`` names; NetworkConfigError naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NetworkConfigError(f"{setting}: the file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise NetworkConfigError(f"{setting}: the file {path} cannot be read ({reason})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NetworkConfigError(f"{setting}: {path} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    try:
        return parse(raw)
    except ValueError as exc:
        raise NetworkConfigError(f"{setting}: {path}: {exc}") from None


def parse(raw: object) -> NetworkConfig:
    """The configuration from its decoded JSON; ValueError naming the wrong entry."""
    _object(raw, "the file", {"peers", "destinations", "rules"})
    peers_raw = raw.get("peers", [])
    if not isinstance(peers_raw, list):
        raise ValueError("peers must be a list")
    peers = tuple(_peer(p, f"peers[{i}]") for i, p in enumerate(peers_raw))
    destinations_raw = raw.get("destinations", {})
    if not isinstance(destinations_raw, dict):
        raise ValueError("destinations must be an object: name -> destination")
    destinations = tuple(_destination(name, d) for name, d in destinations_raw.items())
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ValueError("rules must be a list")
    names = {d.name for d in destinations}
    rules = tuple(_rule(r, f"rules[{i}]", names) for i, r in enumerate(rules_raw))
    seen: set[tuple[str, str | None]] = set()
    for i, peer in enumerate(peers):
        if (peer.ae_title, peer.host) in seen:
            raise ValueError(f"peers[{i}] repeats AE title {peer.ae_title!r} with the same host")
        seen.add((peer.ae_title, peer.host))
    return NetworkConfig(peers, destinations, rules)


def _object(value: object, where: str, allowed: set[str]) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false")
    return value


def _host(value: object, where: str, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 253 or any(c.isspace() for c in value):
        raise ValueError(f"{where} must be a host name or address")
    return value.strip()


def _text(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string or null")
    return value


def _peer(raw: object, where: str) -> Peer:
    _object(raw, where, {"ae_title", "host", "anonymize", "user"})
    if "ae_title" not in raw:
        raise ValueError(f"{where} has no ae_title")
    return Peer(
        ae_title=ae_title(raw["ae_title"], f"{where}.ae_title"),
        host=_host(raw.get("host"), f"{where}.host", required=False),
        anonymize=_bool(raw.get("anonymize", False), f"{where}.anonymize"),
        user=_text(raw.get("user"), f"{where}.user"),
    )


def _destination(name: str, raw: object) -> Destination:
    where = f"destinations[{name!r}]"
    if not KEYWORD.fullmatch(name) and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError(f"{where}: a destination name is 1 to 64 letters, digits, '_', '.' or '-'")
    if not isinstance(raw, dict) or raw.get("type") not in ("dimse", "stowrs"):
        raise ValueError(f"{where}.type must be 'dimse' or 'stowrs'")
    if raw["type"] == "dimse":
        _object(raw, where, {"type", "ae_title", "host", "port"})
        port = raw.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValueError(f"{where}.port must be a TCP port (1-65535)")
        return Destination(
            name, "dimse", ae_title=ae_title(raw.get("ae_title"), f"{where}.ae_title"),
            host=_host(raw.get("host"), f"{where}.host", required=True), port=port,
        )  # fmt: skip
    _object(raw, where, {"type", "url", "token"})
    url = raw.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{where}.url must be an http:// or https:// URL")
    return Destination(name, "stowrs", url=url.rstrip("/"), token=_text(raw.get("token"), f"{where}.token"))


def _rule(raw: object, where: str, names: set[str]) -> Rule:
    _object(raw, where, {"match", "to", "anonymize"})
    to = raw.get("to")
    if to not in names:
        raise ValueError(f"{where}.to must name a destination (one of: {', '.join(sorted(names)) or 'none configured'})")
    match = raw.get("match", {})
    if not isinstance(match, dict):
        raise ValueError(f"{where}.match must be an object: DICOM keyword -> value")
    for key, value in match.items():
        if not KEYWORD.fullmatch(key) or not isinstance(value, str):
            raise ValueError(f"{where}.match: each key a DICOM keyword, each value a string")
    return Rule(to, tuple(sorted(match.items())), _bool(raw.get("anonymize", False), f"{where}.anonymize"))
