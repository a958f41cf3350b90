"""OpenID Connect access tokens (``DICOMSVC_AUTH=oidc``): a JWT (RFC 7519) signed by the provider.

The provider is found from its issuer URL: the discovery document
``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4) names its
``jwks_uri``, the JSON Web Key Set (RFC 7517 §5) of the keys it signs with. Verification is
PyJWT's (a maintained JOSE library; no cryptography of our own):

- the signature, with an asymmetric algorithm only (RS256/384/512, PS256/384/512,
  ES256/384/512, EdDSA; RFC 7518 §3) that fits the key's type: ``alg: none`` and HMAC
  (``HS256`` "signed" with the provider's public key as the secret) are refused before any
  key is looked at;
- ``iss`` equal to the configured issuer, ``aud`` containing the configured audience,
  ``exp`` and ``nbf`` with ``DICOMSVC_OIDC_CLOCK_SKEW`` seconds of leeway (RFC 7519 §4.1);
  ``sub`` present: it is the user.

Keys are cached by ``kid``. A token naming a ``kid`` not in the cache makes the key set be
fetched again -- at most once every ``DICOMSVC_OIDC_REFETCH_INTERVAL`` seconds, so a flood of
made-up ``kid`` values cannot make us hammer the provider -- which is how a provider's key
rotation is followed without a restart. The whole set is fetched again after
``DICOMSVC_OIDC_JWKS_MAX_AGE`` seconds, so a key the provider withdrew stops verifying.

Roles come from a claim path (``DICOMSVC_OIDC_ROLES_CLAIM``, dotted: Keycloak's realm roles
are ``realm_access.roles``, a client's ``resource_access.<client>.roles``); only the
service's role names (``reader``, ``uploader``, ``admin``) count.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from ..identity import ROLES, Identity
from .failure import AuthFailure  # noqa: F401 -- raised here, and importable from here

log = logging.getLogger("dicomsvc.auth")
# Signature algorithms by JWK key type (RFC 7518 §3.1, RFC 8037 §3.1): never "none", never HMAC
ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
ALLOWED = frozenset(alg for algs in ALGORITHMS.values() for alg in algs)
MAX_DOCUMENT_BYTES = 1 << 20  # a discovery document or a JWKS is a few KiB
MAX_USER_CHARS = 255

Fetch = Callable[[str], Any]  # URL -> the JSON document there


def http_fetch(timeout: float) -> Fetch:
    """Fetch a JSON document over HTTP(S) (httpx), at most ``MAX_DOCUMENT_BYTES``."""

    def fetch(url: str) -> Any:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            response.raise_for_status()
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError("document too large")
        return json.loads(body)

    return fetch


def claim_path(claims: dict, path: str) -> Any:
    """The value at a dotted ``path`` (``realm_access.roles``) in the claims; None if absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def roles_of(value: Any) -> frozenset[str]:
    """This service's roles in a claim value: a list of names, or one space-separated string."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str) and v in ROLES)


class OidcVerifier:
    """Verifies access tokens of one provider; thread-safe (called from I/O threads)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        roles_claim: str = "realm_access.roles",
        clock_skew: int = 60,
        refetch_interval: float = 10,
        max_age: float = 3600,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.roles_claim = roles_claim
        self.clock_skew = clock_skew
        self.refetch_interval = refetch_interval
        self.max_age = max_age
        self.fetch = fetch or http_fetch(5)
        self.clock = clock
        self._keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, its "alg")
        self._fetched_at: float | None = None  # last attempt, successful or not
        self._loaded_at: float | None = None  # last successful fetch
        self._lock = threading.Lock()
        self.fetches = 0  # key set fetches attempted (tests watch the rate limit with it)

    @classmethod
    def from_config(cls, config) -> "OidcVerifier":
        return cls(
            config.oidc_issuer, config.oidc_audience, config.oidc_roles_claim, config.oidc_clock_skew,
            config.oidc_refetch_interval, config.oidc_jwks_max_age, http_fetch(config.oidc_http_timeout),
        )  # fmt: skip

    def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthFailure("malformed", "the bearer token is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALLOWED:  # "none", HS256 and friends: refused outright
            raise AuthFailure("bad_algorithm", "the token's signature algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("malformed", "the token's key id is not a string")
        key, declared = self._key(kid)
        if alg not in ALGORITHMS.get(key.key_type, ()):
            raise AuthFailure("bad_algorithm", "the token's algorithm does not fit its key")
        if declared and declared != alg:  # the key is for another algorithm (RFC 7517 §4.4)
            raise AuthFailure("bad_algorithm", "the token's algorithm is not its key's")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.clock_skew,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailure("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailure("not_yet_valid", "the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthFailure("wrong_audience", "the token is not meant for this service") from None
        except jwt.InvalidIssuerError:
            raise AuthFailure("wrong_issuer", "the token was issued by another provider") from None
        except jwt.InvalidSignatureError:
            raise AuthFailure("bad_signature", "the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError:
            raise AuthFailure("missing_claim", "the token lacks a required claim") from None
        except jwt.InvalidTokenError:
            raise AuthFailure("invalid", "the token is not valid") from None
        return self.identity(claims)

    def identity(self, claims: dict) -> Identity:
        user = claims.get("sub")
        if not isinstance(user, str) or not user or len(user) > MAX_USER_CHARS:
            raise AuthFailure("missing_claim", "the token's subject is missing or too long")
        display = next(
            (v for v in (claims.get("preferred_username"), claims.get("email")) if isinstance(v, str) and v), user
        )
        roles = roles_of(claim_path(claims, self.roles_claim))
        return Identity(user=user, display=display[:MAX_USER_CHARS], roles=roles, method="oidc")

    # Keys ----------------------------------------------------------------------------------

    def _key(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        with self._lock:
            now = self.clock()
            stale = self._loaded_at is None or now - self._loaded_at >= self.max_age
            unknown = self._find(kid) is None
            may_fetch = self._fetched_at is None or now - self._fetched_at >= self.refetch_interval
            if (stale or unknown) and may_fetch:
                self._refresh(now)
            key = self._find(kid)
        if key is not None:
            return key
        if self._loaded_at is None:
            raise AuthFailure("provider_unreachable", "the identity provider's keys could not be fetched", 503)
        raise AuthFailure("unknown_key", "the token is signed with a key the provider does not publish")

    def _find(self, kid: str | None) -> tuple[jwt.PyJWK, str | None] | None:
        if kid is None:  # no kid: only unambiguous with a single key
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        """Fetch the discovery document and the key set (under the lock). On failure the keys
        held so far stay in use (a provider that is briefly down locks nobody out)."""
        self._fetched_at = now
        self.fetches += 1
        try:
            discovery = self.fetch(self.issuer + "/.well-known/openid-configuration")
            if not isinstance(discovery, dict) or str(discovery.get("issuer", "")).rstrip("/") != self.issuer:
                raise ValueError("the discovery document names another issuer")  # Discovery 1.0 §4.3
            jwks = self.fetch(str(discovery["jwks_uri"]))
            keys = {}
            for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
                if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ALGORITHMS:
                    continue
                try:
                    keys[jwk.get("kid")] = (jwt.PyJWK(jwk), jwk.get("alg"))
                except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
                    continue  # a key we cannot use (unsupported curve, say)
        except Exception as exc:  # unreachable, not JSON, not a key set: say what, not the body
            log.warning("OIDC: the provider's keys could not be fetched (%s)", type(exc).__name__)
            return
        self._keys, self._loaded_at = keys, now
