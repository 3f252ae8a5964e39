"""The diff base without status copies gives kopf's own essence."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from hush.handlers import diffbase

PREFIX = "operator.hush.dev"
KEY = "last-handled-configuration"


def _budget() -> dict[str, Any]:
    return {
        "apiVersion": "hush.dev/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {
            "name": "census",
            "namespace": "analytics",
            "labels": {"team": "a"},
            "annotations": {
                f"{PREFIX}/{KEY}": '{"spec": {"total": "1"}}',
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "note": "kept",
            },
            "resourceVersion": "42",
        },
        "spec": {"total": {"epsilon": "1"}, "teams": [{"name": "a", "epsilon": "1"}]},
        "status": {"ledger": {"entries": [{"sequence": 1}]}, "conditions": []},
    }


@pytest.mark.parametrize(
    "extra_fields", [None, [], ["spec.total"], [("metadata", "labels")]], ids=repr
)
def test_the_essence_is_kopfs_own(extra_fields: list[Any] | None) -> None:
    body = kopf.Body(_budget())
    ours = diffbase.StatuslessDiffBaseStorage(prefix=PREFIX, key=KEY)
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key=KEY)
    essence = ours.build(body=body, extra_fields=extra_fields)
    assert essence == theirs.build(body=body, extra_fields=extra_fields)
    assert "status" not in essence
    assert essence["metadata"]["annotations"] == {"note": "kept"}


@pytest.mark.parametrize("field", ["status.conditions", ("status", "conditions")], ids=repr)
def test_status_fields_asked_for_are_kept(field: Any) -> None:
    body = kopf.Body(_budget())
    ours = diffbase.StatuslessDiffBaseStorage(prefix=PREFIX, key=KEY)
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key=KEY)
    essence = ours.build(body=body, extra_fields=[field])
    assert essence == theirs.build(body=body, extra_fields=[field])
    assert essence["status"] == {"conditions": []}


def test_the_essence_shares_nothing_with_the_object() -> None:
    raw = _budget()
    original = copy.deepcopy(raw)
    essence = diffbase.StatuslessDiffBaseStorage(prefix=PREFIX, key=KEY).build(body=kopf.Body(raw))
    essence["spec"]["teams"][0]["name"] = "changed"
    essence["metadata"]["labels"]["team"] = "changed"
    assert raw == original


def test_the_operator_uses_it() -> None:
    from hush.handlers import startup

    settings = kopf.OperatorSettings()
    startup.operator_configure(settings=settings)
    assert isinstance(settings.persistence.diffbase_storage, diffbase.StatuslessDiffBaseStorage)
