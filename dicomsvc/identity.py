"""Who a request is: the user, their roles and how they proved it (``DICOMSVC_AUTH``).

Plain data, no web framework: the HTTP layer makes an ``Identity`` per request
(``dicomsvc.http.auth``) and hands lower layers only what they need -- the user's
name, recorded as the owner of what they upload (``dicom.uploaded_by``,
``job.created_by``), and the owner filter of ``DICOMSVC_VISIBILITY=own``.

Roles are ordered: ``admin`` may do everything an ``uploader`` may, who may do
everything a ``reader`` may.
"""

from dataclasses import dataclass

ROLES = ("reader", "uploader", "admin")  # lowest first
RANK = {role: rank for rank, role in enumerate(ROLES)}
AUTH_MODES = ("none", "token", "oidc")
VISIBILITIES = ("all", "own")


@dataclass(frozen=True)
class Identity:
    user: str  # the subject: an OIDC token's ``sub``, an API token's user
    display: str  # for people: ``preferred_username`` or ``email``; the user otherwise
    roles: frozenset[str]  # of ROLES; others a provider sends are dropped
    method: str  # how the request authenticated: none | token | oidc

    @property
    def role(self) -> str | None:
        """The highest role held (None: authenticated, but no role of this service)."""
        held = [r for r in self.roles if r in RANK]
        return max(held, key=RANK.__getitem__) if held else None

    def has(self, role: str) -> bool:
        """Whether this identity may act as ``role`` (roles include the ones below them)."""
        mine = self.role
        return mine is not None and RANK[mine] >= RANK[role]

    @property
    def is_admin(self) -> bool:
        return self.has("admin")

    @property
    def owner(self) -> str | None:
        """The name recorded on what this identity uploads; None without authentication."""
        return None if self.method == "none" else self.user


# DICOMSVC_AUTH=none: everyone is everything, and nothing is recorded as theirs.
ANONYMOUS = Identity(user="anonymous", display="anonymous", roles=frozenset({"admin"}), method="none")


def visible_owner(identity: Identity, visibility: str) -> str | None:
    """The owner filter for this identity's reads: under ``own`` visibility, a reader's or an
    uploader's reads see only what they uploaded; admins (and ``all``) see everything (None)."""
    if visibility != "own" or identity.is_admin:
        return None
    return identity.user
