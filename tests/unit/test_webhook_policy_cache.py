"""The injector's DPPolicy cache, fed by the operator's watch events."""

from __future__ import annotations

import asyncio
from typing import Any

from hush.webhook import service


def _policy(name: str, epsilon: float, **metadata: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": name, **metadata},
        "spec": {"routes": [{"path": "/count", "epsilon": epsilon}]},
    }


def test_the_latest_event_wins_and_deletions_forget() -> None:
    cache = service.PolicyCache()
    cache.observe("ADDED", _policy("survey", 0.1))
    cache.observe("MODIFIED", _policy("survey", 0.2))
    cached = cache.get("team", "survey")
    assert cached is not None
    assert cached["spec"]["routes"][0]["epsilon"] == 0.2
    assert cache.get("other", "survey") is None

    cache.observe("MODIFIED", _policy("survey", 0.2, deletionTimestamp="2026-11-23T00:00:00Z"))
    assert cache.get("team", "survey") is None
    cache.observe("ADDED", _policy("survey", 0.3))
    cache.observe("DELETED", _policy("survey", 0.3))
    assert cache.get("team", "survey") is None


def test_the_cache_keeps_its_own_copy() -> None:
    cache = service.PolicyCache()
    body = _policy("survey", 0.1)
    cache.observe("ADDED", body)
    body["spec"]["routes"][0]["epsilon"] = 9.0  # kopf reuses and replaces its bodies
    cached = cache.get("team", "survey")
    assert cached is not None
    assert cached["spec"]["routes"][0]["epsilon"] == 0.1


def test_a_cached_policy_is_read_without_the_apiserver() -> None:
    cache = service.PolicyCache()
    cache.observe("ADDED", _policy("survey", 0.1))
    cluster = service.KubeCluster(cache)
    cluster.close()  # no thread pool: a lookup that left the cache would fail
    policy = asyncio.run(cluster.read_policy("team", "survey"))
    assert policy is not None
    assert policy["metadata"]["name"] == "survey"
