"""Proving who a request is: API tokens (``tokens``) and OpenID Connect access tokens (``oidc``).

Pure and synchronous (no web framework): ``dicomsvc.http.auth`` calls these from its
middleware, in an I/O thread (the OIDC verifier may fetch keys over the network).
"""
