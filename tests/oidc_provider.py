"""A local OpenID Connect provider for the tests: an HTTP server in a thread serving the
discovery document (OpenID Connect Discovery 1.0 §4) and a JWKS (RFC 7517 §5) of keys made
here with ``cryptography``; tokens are signed with PyJWT. Nothing leaves loopback."""

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "dicomsvc"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Provider:
    def __init__(self):
        self.keys: dict[str, object] = {}  # kid -> private key
        self.published: list[str] = []  # kids in the JWKS
        self.fetches = {"discovery": 0, "jwks": 0}
        self.down = False
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if provider.down:
                    self.send_error(503)
                    return
                if self.path == "/.well-known/openid-configuration":
                    provider.fetches["discovery"] += 1
                    body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"}
                elif self.path == "/jwks":
                    provider.fetches["jwks"] += 1
                    body = {"keys": [provider.jwk(kid) for kid in provider.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def add_key(self, kid: str, kind: str = "RSA", publish: bool = True):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RSA" else ec.generate_private_key(ec.SECP256R1())
        self.keys[kid] = key
        if publish:
            self.published.append(kid)
        return key

    def jwk(self, kid: str) -> dict:
        public = self.keys[kid].public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return data | {"kid": kid, "use": "sig"}

    def public_pem(self, kid: str) -> bytes:
        return self.keys[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def claims(self, sub: str = "user-1", roles=("reader",), **extra) -> dict:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "preferred_username": f"{sub}-name",
            "realm_access": {"roles": list(roles)},
        } | extra

    def token(self, kid: str = "k1", alg: str = "RS256", claims: dict | None = None, **claim_args) -> str:
        return jwt.encode(claims or self.claims(**claim_args), self.keys[kid], algorithm=alg, headers={"kid": kid})

    def unsigned(self, claims: dict, alg: str = "none", kid: str = "k1") -> str:
        header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        return f"{header}.{b64(json.dumps(claims).encode())}."

    def hs256_with_public_key(self, claims: dict, kid: str = "k1") -> str:
        """The classic confusion attack: HMAC 'signed' with the provider's public key as secret."""
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
        mac = hmac.new(self.public_pem(kid), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"


def tampered(token: str, **changes) -> str:
    """The token with its payload changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{b64(json.dumps(claims | changes).encode())}.{signature}"
