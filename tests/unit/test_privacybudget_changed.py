"""privacybudget_changed re-evaluates the dependent policies even while their index changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from hush.handlers import dppolicy


class _LiveStore:
    """Iterates like kopf's index store: over its live dict of values."""

    def __init__(self, items: dict[str, dppolicy.PolicySnapshot]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[dppolicy.PolicySnapshot]:
        return iter(self.items.values())


def _snapshot(name: str) -> dppolicy.PolicySnapshot:
    return dppolicy.PolicySnapshot(name=name, spec={}, generation=1, status={})


def test_every_policy_is_patched_although_the_index_changes_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _LiveStore({"a": _snapshot("a"), "b": _snapshot("b")})
    patched: list[str] = []

    def patch_custom_status(*, name: str, **_: Any) -> None:
        patched.append(name)
        # The patch is itself an event of the policy: kopf re-indexes it meanwhile.
        store.items[f"{name}-reindexed"] = _snapshot(name)
        del store.items[name]

    monkeypatch.setattr(dppolicy, "_evaluate", lambda *_, **__: object())
    monkeypatch.setattr(dppolicy.status_patch, "changed_fields", lambda *_: {"ready": True})
    monkeypatch.setattr(dppolicy.client, "patch_custom_status", patch_custom_status)
    asyncio.run(
        dppolicy.privacybudget_changed(
            namespace="analytics",
            name="census",
            logger=logging.getLogger("test"),  # type: ignore[arg-type]
            privacybudget_by_name={},
            dppolicy_by_budget={("analytics", "census"): store},
        )
    )
    assert patched == ["a", "b"]
