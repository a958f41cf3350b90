"""Long-lived API tokens (``DICOMSVC_AUTH=token``, and accepted under ``oidc`` too).

A token is ``dsvc_`` and 32 random bytes (256 bits, ``secrets.token_urlsafe``), shown once
when made (``dicomsvc token create``); only its SHA-256 is stored (``storage.tokens``).
No slow, salted password hash (bcrypt, scrypt, Argon2) is needed: those protect secrets of
low entropy, which an attacker holding the hashes could guess one by one. A 256-bit random
token cannot be guessed, whatever the speed of the hash, so a plain SHA-256 is as safe --
and it lets a request's token be found by an indexed equality lookup on its hash, instead
of trying a slow hash against every stored token.
"""

import hashlib
import re
import secrets

PREFIX = "dsvc_"
TOKEN_RE = re.compile(r"dsvc_[A-Za-z0-9_-]{43}")  # 32 bytes, base64url without padding


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def looks_like_token(text: str) -> bool:
    """An API token (not a JWT, whose three parts are separated by dots)."""
    return TOKEN_RE.fullmatch(text) is not None


def token_hash(token: str) -> str:
    """What is stored and looked up: the SHA-256 of the token, hex."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()
