"""``GET /metrics`` (Prometheus text format) and what the HTTP side counts.

The metrics themselves live in ``dicomsvc.metrics`` (counted in the server process
only: that module says why). Authentication calls ``auth_failure(reason)`` for each
request it refuses.
"""

from ..metrics import auth_failure

__all__ = ["auth_failure"]
