"""Why a request's credentials were refused: one exception for API tokens and OIDC alike.

Its own module so the HTTP side can catch it without loading the OIDC verifier (PyJWT,
cryptography and an HTTP client: about 10 MiB a server never needs unless
DICOMSVC_AUTH=oidc).
"""


class AuthFailure(Exception):
    """A token that does not verify; ``reason`` is a short code (for logs and metrics, never
    the token or its claims), ``status`` 401, or 503 when the provider cannot be reached."""

    def __init__(self, reason: str, detail: str, status: int = 401):
        super().__init__(detail)
        self.reason, self.detail, self.status = reason, detail, status
