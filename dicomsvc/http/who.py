"""Who a request is, for logs and the audit trail: the ``Identity`` authentication put on
``request.state.user`` (``dicomsvc.identity``: ``user``, ``role``), read from the ASGI scope."""

ANONYMOUS = "anonymous"  # the user of every request under DICOMSVC_AUTH=none (an admin)


def identity(scope: dict):
    return (scope.get("state") or {}).get("user")


def who(scope: dict) -> tuple[str, str]:
    """(user, role) of a request: the role is the highest the identity holds. With no
    identity on it: ``anonymous`` -- an admin when DICOMSVC_AUTH=none (everyone is), no role
    otherwise (the request was refused before it authenticated)."""
    found = identity(scope)
    if found is not None:
        return str(getattr(found, "user", ANONYMOUS)), str(getattr(found, "role", None) or "")
    app = scope.get("app")
    svc = getattr(getattr(app, "state", None), "svc", None)
    if getattr(getattr(svc, "config", None), "auth", "none") == "none":
        return ANONYMOUS, "admin"
    return ANONYMOUS, ""
