"""The no-averaging cache: an identical request within ``cacheTTL`` gets the identical answer.

Invariant 5: repeating a query must not let anyone average the noise away. So the first
answer released for a request (a noisy document, or the generic charged failure) is kept
and served byte for byte, uncharged, until its route's TTL expires. Evicting an entry early
(the cache is bounded) is safe: the next identical request is simply charged again, as any
new release is.

"Identical" is what the application could tell apart (release contract section 6), so the
key (``key``) covers:

- the method and the raw path;
- the raw query parameters as an ordered list of ``(name, value or None)`` pairs
  (``query_pairs``): ``?a`` (no value) differs from ``?a=`` (empty value), and the order of
  a repeated parameter is kept (``g=a&g=b`` is not ``g=b&g=a``); only *distinct* names are
  put in order (a stable sort by name), which no application reads differently;
- a digest of the body;
- the policy hash;
- every request header the sidecar forwards to the application (``forwarded_headers``):
  ``Authorization``, ``Cookie`` and the route's ``varyHeaders`` (who asks), plus ``Accept``
  and ``Content-Type``. What the application sees is what identifies an answer, so one
  tenant never receives another's cached answer.

No normalisation beyond that: two spellings the application might read alike (``%61`` and
``a``) are two keys, which costs a second charge, never a merged answer.

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
from collections.abc import Awaitable, Callable, Iterable, Sequence

QueryPairs = tuple[tuple[str, str | None], ...]
"""Raw query parameters in request order: ``(name, value)``, value None for ``?name``."""

IdentityHeaders = tuple[tuple[str, tuple[str, ...]], ...]
"""Forwarded request headers: (lower-case name, every value in order), by name."""

IDENTITY_HEADERS = ("authorization", "cookie")
"""Forwarded (and keyed) on every route: how clients usually say who they are."""

CONTENT_HEADERS = ("accept", "content-type")
"""Forwarded (and keyed) on every route: what the application needs to read and answer."""


@dataclasses.dataclass(frozen=True)
class CachedAnswer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    expires: float


def query_pairs(raw_query: str) -> QueryPairs:
    """The raw (undecoded) query string as pairs, in order.

    ``a`` gives ``("a", None)``, ``a=`` gives ``("a", "")``; an empty part (``a=1&&b=2``)
    is a parameter with an empty name, which no route declares, so it is refused.
    """
    if not raw_query:
        return ()
    pairs: list[tuple[str, str | None]] = []
    for part in raw_query.split("&"):
        name, separator, value = part.partition("=")
        pairs.append((name, value if separator else None))
    return tuple(pairs)


def forwarded_headers(vary_headers: Iterable[str]) -> tuple[str, ...]:
    """The lower-case names of the request headers forwarded upstream (and keyed), sorted."""
    names = {*IDENTITY_HEADERS, *CONTENT_HEADERS, *(name.lower() for name in vary_headers)}
    return tuple(sorted(names))


def identity(values: Callable[[str], Sequence[str]], names: Iterable[str]) -> IdentityHeaders:
    """Every value of each named header, in order; a missing header has no values.

    ``values`` maps a header name to all its values (``request.headers.getall(name, [])``),
    so that a header sent twice is keyed with both values.
    """
    return tuple((name, tuple(values(name))) for name in names)


def key(
    *,
    method: str,
    path: str,
    query: QueryPairs,
    body: bytes,
    policy_hash: str,
    headers: IdentityHeaders,
) -> str:
    """The cache key of one request (a digest, so it is safe to keep)."""
    ordered = sorted(query, key=lambda pair: pair[0])  # stable: repeated names keep order
    parts: list[bytes] = [
        method.upper().encode(),
        path.encode(),
        len(ordered).to_bytes(8, "big"),
    ]
    for name, value in ordered:
        parts.append(name.encode())
        # None (``?a``) and "" (``?a=``) must differ: a marker byte, then the value.
        parts.append(b"\x00" if value is None else b"\x01" + value.encode())
    parts.append(hashlib.sha256(body).digest())
    parts.append(policy_hash.encode())
    parts.append(len(headers).to_bytes(8, "big"))
    for name, header_values in sorted(headers):
        parts.append(name.lower().encode())
        parts.append(len(header_values).to_bytes(8, "big"))
        parts.extend(header_value.encode() for header_value in header_values)
    digest = hashlib.sha256()
    for part in parts:  # length-prefixed, so no two sequences of parts collide
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
