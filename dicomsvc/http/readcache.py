"""Answers that never change for an id, kept in memory: the PNG rendered at ingest
(``GET /image``) and the tag rows as JSON (``GET /tags``).

A stored instance is never modified (anonymizing makes a new one with a new id; ids are
never reused), so an answer goes stale only when its instance is deleted. Every delete
runs in this process (the data directory's lock allows one server; workers only insert)
and calls ``forget`` with the ids it removed as soon as its transaction has committed, so
the cache holds only instances that exist: ``hotreads`` answers from it without asking
the database. (With an index shared by several replicas, PostgreSQL, others' deletes do
not come here: ``hotreads`` then looks the row up before answering from the cache.) A fill that raced a delete is dropped: a filler takes ``generation`` before
it looks the row up and passes it to ``put``, which keeps nothing if a ``forget`` came in
between. Bounded by ``DICOMSVC_READ_CACHE_BYTES`` (least recently used out first); an
answer larger than an eighth of it is not kept, so one large answer never empties it.
"""

from collections import OrderedDict
from collections.abc import Hashable


class ReadCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_item = max_bytes // 8
        self.size = 0
        self.generation = 0  # how many forgets so far (``put``'s guard against a racing delete)
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes, generation: int | None = None) -> None:
        """Keep ``body``; with ``generation`` (taken before the row was looked up), only if no
        instance was forgotten since."""
        if len(body) > self.max_item or key in self._items:
            return
        if generation is not None and generation != self.generation:
            return
        self._items[key] = body
        self.size += len(body)
        while self.size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)

    def forget(self, instance_ids) -> None:
        """The instances are deleted (committed): their answers go, and fills under way are dropped."""
        self.generation += 1
        for instance_id in instance_ids:
            for key in (("png", instance_id), ("tags", instance_id)):
                body = self._items.pop(key, None)
                if body is not None:
                    self.size -= len(body)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
