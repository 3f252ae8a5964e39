"""Leader election without a cluster: the pure rule, the Lease builders, the elector loop
over an in-memory compare-and-swap store, and the writers' refusal to spend on a standby.

Clocks are injected (a monotonic reading and a wall clock that tests move by hand); no test
sleeps.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
from typing import Any

import pytest

from hush.accountant import leadership, writer
from hush.cli import main
from hush.cli import operator as operator_command
from hush.kube import client
from hush.ledger import book

TIMING = leadership.Timing()  # lease 8 s, renew every 2 s, renew deadline 6 s
START = 1000.0


def _lease(holder: str, version: str = "7", duration: int = 8) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "hush-operator",
            "namespace": "hush-system",
            "resourceVersion": version,
            "managedFields": [{"manager": "someone"}],
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": "2026-11-22T11:00:00.000000Z",
            "renewTime": "2026-11-22T11:59:58.000000Z",
            "leaseTransitions": 3,
        },
    }


def _decide(
    lease: dict[str, Any] | None, now: float, previous: leadership.Observation | None = None
) -> leadership.Decision:
    return leadership.decide(lease, identity="me", now=now, previous=previous, timing=TIMING)


# -- the pure rule -------------------------------------------------------------------------


def test_timing_must_keep_the_old_leader_stopped_before_a_standby_takes_over() -> None:
    with pytest.raises(ValueError, match="renew_deadline < lease_duration"):
        leadership.Timing(lease_duration=5.0, renew_deadline=6.0)
    with pytest.raises(ValueError, match="request_timeout < renew_deadline"):
        leadership.Timing(request_timeout=6.0)


def test_a_missing_lease_is_created() -> None:
    decision = _decide(None, START)
    assert (decision.action, decision.observation) == ("create", None)


def test_my_own_lease_is_renewed_even_after_a_restart_that_kept_the_identity() -> None:
    decision = _decide(_lease("me"), START, previous=None)
    assert decision.action == "renew"
    assert decision.wait == TIMING.renew_period


def test_a_released_lease_is_acquired_at_once() -> None:
    decision = _decide(_lease("", duration=1), START)
    assert decision.action == "acquire"


def test_another_holders_lease_is_respected_for_a_full_duration_from_first_sight() -> None:
    first = _decide(_lease("them"), START)
    assert first.action == "stand-by"
    assert first.observation == leadership.Observation(
        resource_version="7", holder="them", seen_at=START
    )
    # Unchanged record: the clock runs from when it was first seen, not from each look.
    later = _decide(_lease("them"), START + 7.0, previous=first.observation)
    assert later.action == "stand-by"
    assert later.wait == pytest.approx(1.0)  # look again exactly when it would expire
    expired = _decide(_lease("them"), START + 8.0, previous=later.observation)
    assert expired.action == "acquire"
    assert expired.holder == "them"


def test_a_renewed_lease_restarts_the_count() -> None:
    first = _decide(_lease("them", version="7"), START)
    renewed = _decide(_lease("them", version="8"), START + 7.0, previous=first.observation)
    assert renewed.action == "stand-by"
    assert renewed.observation is not None
    assert renewed.observation.seen_at == START + 7.0
    assert _decide(_lease("them", version="8"), START + 14.0, renewed.observation).action == (
        "stand-by"
    )


def test_the_lease_timestamps_are_never_compared_with_my_clock() -> None:
    # renewTime is hours old by the wall clock, yet a fresh observer still waits.
    stale = _lease("them")
    stale["spec"]["renewTime"] = "2020-01-01T00:00:00.000000Z"
    assert _decide(stale, START).action == "stand-by"


def test_the_lease_duration_written_in_the_lease_is_the_one_honoured() -> None:
    short = _decide(_lease("them", duration=2), START)
    assert _decide(_lease("them", duration=2), START + 2.0, short.observation).action == "acquire"


# -- the Lease builders ------------------------------------------------------------------


def test_micro_time_has_exactly_six_fractional_digits_in_utc(now: datetime.datetime) -> None:
    moment = now.replace(microsecond=42).astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert leadership.micro_time(moment) == "2026-11-22T12:00:00.000042Z"


def test_a_new_lease_names_its_holder(now: datetime.datetime) -> None:
    assert leadership.build_lease(
        "hush-system", "hush-operator", identity="me", now=now, timing=TIMING
    ) == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "hush-operator", "namespace": "hush-system"},
        "spec": {
            "holderIdentity": "me",
            "leaseDurationSeconds": 8,
            "acquireTime": "2026-11-22T12:00:00.000000Z",
            "renewTime": "2026-11-22T12:00:00.000000Z",
            "leaseTransitions": 0,
        },
    }


def test_a_renewal_keeps_the_acquire_time_and_carries_the_resource_version(
    now: datetime.datetime,
) -> None:
    body = leadership.claim(_lease("me"), identity="me", now=now, timing=TIMING)
    assert body["metadata"] == {
        "name": "hush-operator",
        "namespace": "hush-system",
        "resourceVersion": "7",
    }
    assert body["spec"] == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 8,
        "acquireTime": "2026-11-22T11:00:00.000000Z",
        "renewTime": "2026-11-22T12:00:00.000000Z",
        "leaseTransitions": 3,
    }


def test_a_takeover_counts_a_transition(now: datetime.datetime) -> None:
    spec = leadership.claim(_lease("them"), identity="me", now=now, timing=TIMING)["spec"]
    assert spec["holderIdentity"] == "me"
    assert spec["acquireTime"] == "2026-11-22T12:00:00.000000Z"
    assert spec["leaseTransitions"] == 4


def test_a_release_leaves_no_holder(now: datetime.datetime) -> None:
    body = leadership.release(_lease("me"), now=now)
    assert body["metadata"]["resourceVersion"] == "7"
    assert body["spec"]["holderIdentity"] == ""
    assert body["spec"]["leaseDurationSeconds"] == 1


# -- the elector over an in-memory compare-and-swap store ---------------------------------


class MemoryLeaseStore:
    """One Lease with the apiserver's rules: create fails if it exists, PUT needs the
    current resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.failing = False

    def _check(self) -> None:
        if self.failing:
            raise ConnectionError("apiserver unreachable")

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise client.ConflictError("exists")
        return self._stored(body)

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.lease is None or body["metadata"].get("resourceVersion") != str(self.version):
            raise client.ConflictError("changed")
        return self._stored(body)

    @property
    def holder(self) -> str:
        return leadership.holder_of(self.lease) if self.lease is not None else ""


@dataclasses.dataclass
class Clock:
    monotonic: float = START

    def wall(self) -> datetime.datetime:
        return datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC) + datetime.timedelta(
            seconds=self.monotonic
        )


@dataclasses.dataclass
class Replica:
    elector: leadership.Elector
    transitions: list[str]


def _replica(store: MemoryLeaseStore, clock: Clock, identity: str) -> Replica:
    transitions: list[str] = []
    elector = leadership.Elector(
        store,
        leadership.Settings(namespace="hush-system", identity=identity, timing=TIMING),
        on_started_leading=lambda: transitions.append("started"),
        on_stopped_leading=lambda: transitions.append("stopped"),
        monotonic=lambda: clock.monotonic,
        wall_clock=clock.wall,
    )
    return Replica(elector, transitions)


async def test_one_replica_leads_and_the_other_stands_by() -> None:
    store, clock = MemoryLeaseStore(), Clock()
    first, second = _replica(store, clock, "a"), _replica(store, clock, "b")

    assert await first.elector.tick() == TIMING.renew_period
    await second.elector.tick()

    assert store.holder == "a"
    assert (first.elector.is_leader(), second.elector.is_leader()) == (True, False)
    assert (first.transitions, second.transitions) == (["started"], [])


async def test_a_standby_takes_over_a_dead_leaders_lease_after_the_lease_duration() -> None:
    store, clock = MemoryLeaseStore(), Clock()
    leader, standby = _replica(store, clock, "a"), _replica(store, clock, "b")
    await leader.elector.tick()
    await standby.elector.tick()  # first sight of version 1 at START
    # The leader dies: nobody renews. The standby looks every renew period.
    for _ in range(3):
        clock.monotonic += TIMING.renew_period
        await standby.elector.tick()
        assert store.holder == "a"
    assert not leader.elector.is_leader()  # 6 s without renewal: it no longer acts as one
    clock.monotonic = START + TIMING.lease_duration
    await standby.elector.tick()

    assert store.holder == "b"
    assert standby.elector.is_leader()
    assert store.lease is not None
    assert store.lease["spec"]["leaseTransitions"] == 1


async def test_leaders_never_overlap_on_the_same_clock() -> None:
    store, clock = MemoryLeaseStore(), Clock()
    leader, standby = _replica(store, clock, "a"), _replica(store, clock, "b")
    await leader.elector.tick()
    await standby.elector.tick()
    while not standby.elector.is_leader():
        assert clock.monotonic < START + 3 * TIMING.lease_duration
        clock.monotonic += 0.5
        await standby.elector.tick()
        assert not (leader.elector.is_leader() and standby.elector.is_leader())


async def test_a_leader_that_cannot_renew_stands_down_by_its_deadline() -> None:
    store, clock = MemoryLeaseStore(), Clock()
    leader = _replica(store, clock, "a")
    await leader.elector.tick()
    store.failing = True
    clock.monotonic += TIMING.renew_period
    await leader.elector.tick()  # fails, logs, still within the deadline
    assert leader.elector.is_leader()
    clock.monotonic = START + TIMING.renew_deadline
    # is_leader turns False by itself; the loop reports it on its next round.
    assert not leader.elector.is_leader()
    assert leader.transitions == ["started"]
    await leader.elector.tick()
    assert leader.transitions == ["started", "stopped"]


async def test_a_leader_that_finds_another_holder_stands_down() -> None:
    store, clock = MemoryLeaseStore(), Clock()
    leader = _replica(store, clock, "a")
    await leader.elector.tick()
    assert store.lease is not None
    store.lease["spec"]["holderIdentity"] = "b"  # e.g. after a long pause of this process
    store.version += 1
    store.lease["metadata"]["resourceVersion"] = str(store.version)
    clock.monotonic += TIMING.renew_period
    await leader.elector.tick()
    assert not leader.elector.is_leader()
    assert leader.transitions == ["started", "stopped"]


async def test_two_standbys_racing_for_an_expired_lease_produce_one_leader() -> None:
    store, clock = MemoryLeaseStore(), Clock()
    store.lease = _lease("dead", version="1")
    store.version = 1
    first, second = _replica(store, clock, "a"), _replica(store, clock, "b")
    await first.elector.tick()
    await second.elector.tick()
    clock.monotonic += TIMING.lease_duration
    # Both read version 1 and decide to acquire; the compare-and-swap lets one through.
    reads = [await store.read("", ""), await store.read("", "")]
    real_read = store.read

    async def stale_read(namespace: str, name: str) -> dict[str, Any] | None:
        return reads.pop()

    store.read = stale_read  # type: ignore[method-assign]
    await first.elector.tick()
    await second.elector.tick()
    store.read = real_read  # type: ignore[method-assign]

    assert store.holder == "a"
    assert (first.elector.is_leader(), second.elector.is_leader()) == (True, False)


async def test_stopping_releases_the_lease_so_the_standby_takes_over_at_its_next_look() -> None:
    store, clock = MemoryLeaseStore(), Clock()
    leader, standby = _replica(store, clock, "a"), _replica(store, clock, "b")
    await leader.elector.tick()
    await standby.elector.tick()

    await leader.elector.stop()
    assert leader.transitions == ["started", "stopped"]
    assert store.holder == ""
    clock.monotonic += TIMING.renew_period  # far less than the lease duration
    await standby.elector.tick()
    assert store.holder == "b"
    assert standby.elector.is_leader()


# -- the writers on a standby ------------------------------------------------------------


def _granted(working: book.Book, now: datetime.datetime) -> book.Outcome:
    return book.Outcome(code="granted", ok=True, message="Granted")


class BlockedBudgetStore:
    """Reads wait until ``opened`` is set, so that a batch can be caught mid-flight."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.reads = 0
        self.writes = 0

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        await self.opened.wait()
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"}}

    async def write_status(self, body: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        return body


async def _let_tasks_run() -> None:
    """A few turns of the event loop: enough for ready tasks to reach their next await."""
    for _ in range(5):
        await asyncio.sleep(0)


def _registry(store: BlockedBudgetStore, leading: list[bool]) -> writer.WriterRegistry:
    return writer.WriterRegistry(
        store,
        clock=lambda: datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC),
        spending_refusal=lambda: None if leading[0] else "standby",
    )


async def test_a_standby_refuses_spends_with_503() -> None:
    store = BlockedBudgetStore()
    registry = _registry(store, leading=[False])
    with pytest.raises(writer.BudgetUnavailableError) as refused:
        await registry.writer("ns", "survey").submit(_granted)
    assert (refused.value.status, str(refused.value)) == (503, "standby")
    assert store.reads == 0


async def test_losing_leadership_fails_queued_spends_and_the_batch_being_read() -> None:
    store = BlockedBudgetStore()
    leading = [True]
    registry = _registry(store, leading)
    budget_writer = registry.writer("ns", "survey")
    in_flight = asyncio.create_task(budget_writer.submit(_granted))
    await _let_tasks_run()
    assert store.reads == 1  # the first batch is now waiting for its read
    queued = asyncio.create_task(budget_writer.submit(_granted))
    await _let_tasks_run()

    leading[0] = False
    registry.fail_queued_spends("standby")
    with pytest.raises(writer.BudgetUnavailableError, match="standby"):
        await queued
    store.opened.set()  # the read returns after leadership was lost
    with pytest.raises(writer.BudgetUnavailableError, match="standby"):
        await in_flight
    assert store.writes == 0
    await registry.stop()


# -- the flags of `hush operator` ---------------------------------------------------------


def _operator_arguments(*flags: str) -> Any:
    return main.build_parser().parse_args(["operator", "--accountant-port=8443", *flags])


def test_leader_election_is_off_unless_asked_for() -> None:
    settings = operator_command.leader_election_settings(_operator_arguments(), {}, "host_1")
    assert settings is None


def test_the_lease_lives_in_the_pods_namespace_by_default() -> None:
    arguments = _operator_arguments("--leader-election")
    in_pod = operator_command.leader_election_settings(
        arguments, {"POD_NAMESPACE": "hush-system"}, "pod-abc_1"
    )
    assert in_pod == leadership.Settings(
        namespace="hush-system", name="hush-operator", identity="pod-abc_1"
    )
    outside = operator_command.leader_election_settings(arguments, {}, "host_1")
    assert outside is not None
    assert outside.namespace == "default"


def test_the_lease_namespace_and_name_can_be_chosen() -> None:
    arguments = _operator_arguments(
        "--leader-election",
        "--leader-election-namespace=ops",
        "--leader-election-name=hush-blue",
    )
    settings = operator_command.leader_election_settings(
        arguments, {"POD_NAMESPACE": "hush-system"}, "host_1"
    )
    assert settings is not None
    assert (settings.namespace, settings.name) == ("ops", "hush-blue")
