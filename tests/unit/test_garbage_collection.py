"""The operator's garbage-collector settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hush.cli import garbage_collection


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_default_and_override() -> None:
    assert garbage_collection.gen0_threshold({}) == 10_000
    assert garbage_collection.gen0_threshold({"HUSH_GC_GEN0_THRESHOLD": " 50000 "}) == 50_000


@pytest.mark.parametrize("text", ["ten", "1.5", "699", "0", "-1"])
def test_bad_values_are_refused_with_the_variable_named(text: str) -> None:
    with pytest.raises(ValueError, match="HUSH_GC_GEN0_THRESHOLD"):
        garbage_collection.gen0_threshold({"HUSH_GC_GEN0_THRESHOLD": text})


@pytest.mark.usefixtures("restored_collector")
def test_tune_freezes_startup_objects_and_sets_the_young_threshold() -> None:
    before = gc.get_threshold()
    garbage_collection.tune(garbage_collection.gen0_threshold({"HUSH_GC_GEN0_THRESHOLD": "12345"}))
    assert gc.get_threshold() == (12345, before[1], before[2])
    assert gc.get_freeze_count() > 0


def test_the_operator_refuses_a_bad_value_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from hush.cli import main

    monkeypatch.setenv("HUSH_GC_GEN0_THRESHOLD", "ten")
    with pytest.raises(SystemExit, match="HUSH_GC_GEN0_THRESHOLD must be an integer"):
        main.main(["operator"])
