"""The no-averaging cache: an identical request within ``cacheTTL`` gets the identical answer.

Invariant 5: repeating a query must not let anyone average the noise away. So the first
noisy answer to a request is kept, keyed by (method, path, normalised query string, body
digest, policy hash), and served byte for byte, uncharged, until its route's TTL expires.
Evicting an entry early (the cache is bounded) is safe: the next identical request is simply
charged again, as any new release is.

``single_flight`` makes concurrent identical requests wait for the first one instead of each
drawing (and charging) fresh noise, which would hand out independent samples at once.

The clock is injected (``clock``) so tests control expiry. Owns no I/O.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import time
import urllib.parse
from collections.abc import Awaitable, Callable


@dataclasses.dataclass(frozen=True)
class CachedAnswer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    expires: float


def normalise_query(query: str) -> str:
    """The query string with its parameters sorted, so ``b=1&a=2`` equals ``a=2&b=1``."""
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return urllib.parse.urlencode(sorted(pairs))


def key(*, method: str, path: str, query: str, body: bytes, policy_hash: str) -> str:
    """The cache key of one request (a digest, so it is safe to keep and log)."""
    digest = hashlib.sha256()
    for part in (
        method.upper().encode(),
        path.encode(),
        normalise_query(query).encode(),
        hashlib.sha256(body).digest(),
        policy_hash.encode(),
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class AnswerCache:
    """A bounded TTL map from request key to the answer first released for it."""

    def __init__(self, *, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: collections.OrderedDict[str, CachedAnswer] = collections.OrderedDict()
        self._in_flight: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, cache_key: str) -> CachedAnswer | None:
        entry = self._entries.get(cache_key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[cache_key]
            return None
        self._entries.move_to_end(cache_key)
        return entry

    def put(
        self,
        cache_key: str,
        *,
        status: int,
        body: bytes,
        headers: tuple[tuple[str, str], ...],
        ttl_seconds: float,
    ) -> None:
        if self._max_entries == 0 or ttl_seconds <= 0:
            return
        self._entries[cache_key] = CachedAnswer(
            status=status, body=body, headers=headers, expires=self._clock() + ttl_seconds
        )
        self._entries.move_to_end(cache_key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def single_flight(
        self, cache_key: str, compute: Callable[[], Awaitable[CachedAnswer | None]]
    ) -> tuple[CachedAnswer | None, bool]:
        """(answer, hit): a cached answer, or ``compute()`` run by one caller at a time."""
        lock, users = self._in_flight.get(cache_key, (asyncio.Lock(), 0))
        self._in_flight[cache_key] = (lock, users + 1)
        try:
            async with lock:
                cached = self.get(cache_key)
                if cached is not None:
                    return cached, True
                return await compute(), False
        finally:
            lock, users = self._in_flight[cache_key]
            if users <= 1:
                del self._in_flight[cache_key]
            else:
                self._in_flight[cache_key] = (lock, users - 1)
