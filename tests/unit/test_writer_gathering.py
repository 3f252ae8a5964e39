"""Group commit gathers the callers it answered before it writes again (no cohorts).

An in-memory store stands in for the apiserver: this is about the writer's queue, not the
API (the accountant's e2e tests and ``make bench`` cover the real status writes).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from hush.accountant import writer
from hush.ledger import book

BUDGET: dict[str, Any] = {
    "apiVersion": "hush.dev/v1alpha1",
    "kind": "PrivacyBudget",
    "metadata": {
        "name": "survey",
        "namespace": "team",
        "resourceVersion": "1",
        "generation": 1,
        "creationTimestamp": "2026-11-01T00:00:00Z",
    },
    "spec": {
        "dataset": "survey",
        "epsilon": 4.0,
        "delta": 1.0e-6,
        "quotas": [{"team": "analytics", "epsilon": 4.0, "delta": 1.0e-6}],
        "accounting": "pure",
    },
}


class SlowStore:
    """Writes take a while, as real status writes do; records each write's batch."""

    def __init__(self, write_seconds: float = 0.003) -> None:
        self.budget = copy.deepcopy(BUDGET)
        self.version = 1
        self.write_seconds = write_seconds

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.budget)

    async def write_status(self, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(self.write_seconds)
        self.version += 1
        self.budget = {**copy.deepcopy(body)}
        self.budget["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.budget)


def _granted(_: book.Book, __: datetime.datetime) -> book.Outcome:
    return book.Outcome(code="granted", ok=True, message="")


async def _callers(
    gather_seconds: float,
    monkeypatch: pytest.MonkeyPatch,
    *,
    think_seconds: float = 0.0,
    resubmit_seconds: float = 0.0,
    gather_max_seconds: float = 1.0,
    write_seconds: float = 0.003,
    start_seconds: Callable[[int], float] = lambda index: index * 0.0001,
) -> list[int]:
    """20 callers with one operation in flight each, 15 operations apiece: the batch sizes.
    Caller ``i`` takes ``i * think_seconds`` before each resubmission."""
    monkeypatch.setattr(writer, "GATHER_SECONDS", gather_seconds)
    monkeypatch.setattr(writer, "GATHER_MAX_SECONDS", gather_max_seconds)
    store = SlowStore(write_seconds)
    budget_writer = writer.BudgetWriter(
        store, "team", "survey", clock=lambda: datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC)
    )
    sizes: list[int] = []
    commit = budget_writer._commit

    async def recording_commit(batch: list[Any]) -> Any:
        sizes.append(len(batch))
        return await commit(batch)

    monkeypatch.setattr(budget_writer, "_commit", recording_commit)

    async def caller(index: int) -> None:
        await asyncio.sleep(start_seconds(index))  # one by one, as over a network
        for _ in range(15):
            outcome = await budget_writer.submit(_granted)
            assert outcome.ok
            await asyncio.sleep(resubmit_seconds + index * think_seconds)

    await asyncio.gather(*(caller(index) for index in range(20)))
    await budget_writer.stop()
    assert sum(sizes) == 20 * 15
    return sizes


def test_without_gathering_callers_split_into_cohorts(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = asyncio.run(_callers(0.0, monkeypatch))
    # The first caller's write goes alone; the others queue behind it and from then on
    # every write carries only those that queued during the previous one: two cohorts.
    assert sizes == [1, 19] * 15


def test_gathering_lets_every_active_caller_into_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = asyncio.run(_callers(0.5, monkeypatch))
    # The first caller's first operation goes alone; from then on each write waits for
    # every active caller (well inside the window: in-process callers resubmit at once).
    # The first caller finishes one write early, so the last write is one short: that
    # write waited out the window, and a smaller estimate follows.
    assert sizes == [1, *[20] * 14, 19]


def test_gathering_waits_while_callers_keep_arriving(monkeypatch: pytest.MonkeyPatch) -> None:
    # The callers come back 3 ms apart, 57 ms from first to last: more than twice the 25 ms
    # gap (a fixed 25 ms window would cut every round in two), but none of them is a whole
    # gap after the one before, so the writes take everybody. A stall of the test process
    # can split a round and shift the callers for a few rounds: the test asks for the
    # typical write, so that it does not depend on the machine's load.
    sizes = asyncio.run(_callers(0.025, monkeypatch, think_seconds=0.003))
    assert statistics.median(sizes) == 20, sizes


def test_gathering_gives_up_at_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same callers, with at most 20 ms of waiting: no write can wait for all of them.
    sizes = asyncio.run(_callers(0.025, monkeypatch, think_seconds=0.003, gather_max_seconds=0.020))
    assert statistics.median(sizes) < 20, sizes


def test_two_cohorts_merge_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # Half the callers arrive during the first (30 ms) write, so they queue long before the
    # write returns; the other half are answered by it and come back 2 ms later. The writer
    # must wait for those (the gap counts from the start of its wait, not from the queued
    # operations' arrival), or the two halves keep taking turns: [10, 10, 10, ...].
    sizes = asyncio.run(
        _callers(
            0.010,
            monkeypatch,
            write_seconds=0.030,
            resubmit_seconds=0.002,
            start_seconds=lambda index: 0.0 if index < 10 else 0.015,
        )
    )
    assert statistics.median(sizes) == 20, sizes


def test_one_caller_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "GATHER_SECONDS", 60.0)
    store = SlowStore()
    budget_writer = writer.BudgetWriter(
        store, "team", "survey", clock=lambda: datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC)
    )

    async def alone() -> None:
        for _ in range(5):
            # A 60 s window would time this out if a lone caller ever waited for company.
            await asyncio.wait_for(budget_writer.submit(_granted), timeout=5)
        await budget_writer.stop()

    asyncio.run(alone())
