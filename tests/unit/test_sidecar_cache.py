"""The no-averaging cache: what makes two requests the same one (release contract section 6),
expiry, bounds and single flight."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies

from hush.sidecar import cache

NAMES = cache.forwarded_headers(["X-Tenant"])


def _headers(values: Mapping[str, Sequence[str]]) -> cache.IdentityHeaders:
    return cache.identity(lambda name: list(values.get(name, [])), NAMES)


def _key(**overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "method": "GET",
        "path": "/stats",
        "query": cache.query_pairs("g=a&g=b&x=1"),
        "body": b"",
        "policy_hash": "sha256:h",
        "headers": _headers({"authorization": ["Bearer alice"]}),
    }
    arguments.update(overrides)
    return cache.key(**arguments)


def test_query_pairs_keep_the_raw_order_and_tell_no_value_from_an_empty_one() -> None:
    assert cache.query_pairs("") == ()
    assert cache.query_pairs("a") == (("a", None),)
    assert cache.query_pairs("a=") == (("a", ""),)
    assert cache.query_pairs("g=b&g=a&x=%20") == (("g", "b"), ("g", "a"), ("x", "%20"))
    assert cache.query_pairs("a=1&&b=2") == (("a", "1"), ("", None), ("b", "2"))
    assert cache.query_pairs("a=b=c") == (("a", "b=c"),)


def test_a_flag_and_an_empty_value_are_different_requests() -> None:
    assert _key(query=cache.query_pairs("a")) != _key(query=cache.query_pairs("a="))


def test_the_order_of_a_repeated_parameter_is_kept() -> None:
    assert _key(query=cache.query_pairs("g=a&g=b")) != _key(query=cache.query_pairs("g=b&g=a"))


def test_distinct_names_may_come_in_any_order() -> None:
    assert _key(query=cache.query_pairs("a=1&b=2")) == _key(query=cache.query_pairs("b=2&a=1"))
    # ... but each name's values keep their own order when interleaved with others.
    assert _key(query=cache.query_pairs("g=a&x=1&g=b")) == _key(
        query=cache.query_pairs("x=1&g=a&g=b")
    )
    assert _key(query=cache.query_pairs("g=a&x=1&g=b")) != _key(
        query=cache.query_pairs("g=b&x=1&g=a")
    )


def test_spellings_are_never_normalised() -> None:
    assert _key(query=cache.query_pairs("a=%20")) != _key(query=cache.query_pairs("a=+"))
    assert _key(query=cache.query_pairs("%61=1")) != _key(query=cache.query_pairs("a=1"))


@pytest.mark.parametrize(
    "changed",
    [
        {"method": "POST"},
        {"path": "/stats/"},
        {"body": b"x"},
        {"policy_hash": "sha256:g"},
        {"query": cache.query_pairs("g=a&g=b")},
    ],
)
def test_method_path_body_policy_hash_and_query_are_in_the_key(changed: dict[str, Any]) -> None:
    assert _key(**changed) != _key()


def test_the_method_is_case_insensitive() -> None:
    assert _key(method="get") == _key()


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": ["Bearer bob"]},  # another client
        {},  # no credentials at all
        {"authorization": [""]},  # an empty header is not a missing one
        {"authorization": ["Bearer alice"], "cookie": ["session=1"]},
        {"authorization": ["Bearer alice"], "x-tenant": ["blue"]},  # a declared varyHeader
        {"authorization": ["Bearer alice"], "accept": ["text/csv"]},
        {"authorization": ["Bearer alice"], "content-type": ["text/plain"]},
        {"authorization": ["Bearer alice", "Bearer bob"]},  # sent twice
    ],
)
def test_every_forwarded_header_is_in_the_key(headers: dict[str, list[str]]) -> None:
    assert _key(headers=_headers(headers)) != _key()


def test_the_order_of_repeated_header_values_is_kept() -> None:
    twice = _key(headers=_headers({"cookie": ["a=1", "b=2"]}))
    assert twice != _key(headers=_headers({"cookie": ["b=2", "a=1"]}))


def test_only_identity_content_and_vary_headers_are_forwarded() -> None:
    assert cache.forwarded_headers([]) == ("accept", "authorization", "content-type", "cookie")
    assert cache.forwarded_headers(["X-Tenant", "x-tenant"]) == (
        "accept",
        "authorization",
        "content-type",
        "cookie",
        "x-tenant",
    )


_text = strategies.text(alphabet="ab=&%1 ", max_size=6)


@hypothesis.given(
    first=strategies.lists(strategies.tuples(_text, strategies.none() | _text), max_size=4),
    second=strategies.lists(strategies.tuples(_text, strategies.none() | _text), max_size=4),
)
def test_two_queries_share_a_key_only_if_each_name_has_the_same_values_in_order(
    first: list[tuple[str, str | None]], second: list[tuple[str, str | None]]
) -> None:
    def by_name(pairs: list[tuple[str, str | None]]) -> dict[str, list[str | None]]:
        grouped: dict[str, list[str | None]] = {}
        for name, value in pairs:
            grouped.setdefault(name, []).append(value)
        return grouped

    same = by_name(first) == by_name(second)
    assert (_key(query=tuple(first)) == _key(query=tuple(second))) == same


def test_cached_answers_expire_and_the_cache_is_bounded() -> None:
    now = [100.0]
    answers = cache.AnswerCache(max_entries=2, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        answers.put(name, status=200, body=name.encode(), headers=(), ttl_seconds=10)
    assert answers.get("a") is None  # evicted (it will simply be charged again)
    cached = answers.get("b")
    assert cached is not None
    assert cached.body == b"b"
    now[0] = 110.0
    assert answers.get("b") is None


async def test_concurrent_identical_requests_compute_once() -> None:
    answers = cache.AnswerCache(max_entries=10, clock=lambda: 0.0)
    calls = 0

    async def compute() -> cache.CachedAnswer:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        answers.put("k", status=200, body=b"x", headers=(), ttl_seconds=5)
        return cache.CachedAnswer(status=200, body=b"x", headers=(), expires=5)

    results = await asyncio.gather(*(answers.single_flight("k", compute) for _ in range(5)))
    assert calls == 1
    assert sorted(hit for _, hit in results) == [False, True, True, True, True]
