"""Answers that never change for an id, kept in memory: the PNG rendered at ingest
(``GET /image``) and the tag rows as JSON (``GET /tags``).

A stored instance is never modified (anonymizing makes a new one with a new id; ids are
never reused), so neither answer ever goes stale. Each request still looks its row up
first (a point read on the event loop): an instance deleted since, or not the caller's
to see, is a 404 before the cache is asked. Bounded by ``DICOMSVC_READ_CACHE_BYTES``
(least recently used out first); an answer larger than an eighth of it is not kept, so
one large answer never empties it.
"""

from collections import OrderedDict
from collections.abc import Hashable


class ReadCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_item = max_bytes // 8
        self.size = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes) -> None:
        if len(body) > self.max_item or key in self._items:
            return
        self._items[key] = body
        self.size += len(body)
        while self.size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)

    def __len__(self) -> int:
        return len(self._items)
