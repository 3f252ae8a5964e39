"""The leader's pod label (``hush.dev/accountant-leader``), without a cluster.

The accountant Service of the chart selects this label, so it must be on the leader's pod
exactly while it leads: set on acquisition, removed on standing down and on a clean stop
(before the Lease is released), cleared at startup when an earlier process left it, and
removed from any other pod by a new leader. Fakes stand in for the Lease and the pods;
clocks are injected, and no test sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from hush.accountant import leadership
from hush.cli import main
from hush.cli import operator as operator_command
from hush.kube import client
from tests.unit.test_leadership import START, TIMING, Clock, MemoryLeaseStore

NAMESPACE = "hush-system"
LABEL = leadership.LEADER_LABEL


class MemoryPodStore:
    """Pods (name -> labels) in one namespace, with merge-patch semantics for labels."""

    def __init__(self, *names: str) -> None:
        self.labels: dict[str, dict[str, str]] = {name: {"app": "hush"} for name in names}
        self.failing = False
        self.patches: list[tuple[str, dict[str, str | None]]] = []
        self.log: list[str] | None = None  # shared with the Lease store to check the order

    async def patch_labels(
        self, namespace: str, name: str, labels: Mapping[str, str | None]
    ) -> None:
        assert namespace == NAMESPACE
        if self.failing:
            raise ConnectionError("apiserver unreachable")
        self.patches.append((name, dict(labels)))
        if name not in self.labels:
            raise client.ObjectGoneError(f"pods/{name}")
        for key, value in labels.items():
            if value is None:
                self.labels[name].pop(key, None)
            else:
                self.labels[name][key] = value
        if self.log is not None:
            self.log.append(f"label {name} {labels[LABEL]}")

    async def names_with_labels(self, namespace: str, selector: str) -> list[str]:
        if self.failing:
            raise ConnectionError("apiserver unreachable")
        key, _, value = selector.partition("=")
        return sorted(name for name, labels in self.labels.items() if labels.get(key) == value)

    def labelled(self) -> list[str]:
        return sorted(name for name, labels in self.labels.items() if labels.get(LABEL) == "true")


def _elector(
    leases: MemoryLeaseStore, pods: MemoryPodStore, clock: Clock, name: str
) -> leadership.Elector:
    return leadership.Elector(
        leases,
        leadership.Settings(
            namespace=NAMESPACE,
            identity=f"{name}_1",
            timing=TIMING,
            pod=leadership.PodRef(namespace=NAMESPACE, name=name),
        ),
        pods=pods,
        monotonic=lambda: clock.monotonic,
        wall_clock=clock.wall,
    )


def test_the_patch_sets_or_removes_the_one_label() -> None:
    assert leadership.leader_label_patch(leading=True) == {LABEL: "true"}
    assert leadership.leader_label_patch(leading=False) == {LABEL: None}
    assert leadership.LEADER_LABEL_SELECTOR == "hush.dev/accountant-leader=true"


async def test_the_leader_labels_its_pod_and_a_standby_does_not() -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore("pod-a", "pod-b"), Clock()
    first, second = _elector(leases, pods, clock, "pod-a"), _elector(leases, pods, clock, "pod-b")
    await first.tick()
    await second.tick()
    assert await first.sync_pod_label()
    assert await second.sync_pod_label()
    assert pods.labelled() == ["pod-a"]
    # Level-triggered: nothing changes, nothing is written.
    written = len(pods.patches)
    assert await first.sync_pod_label()
    assert await second.sync_pod_label()
    assert len(pods.patches) == written


async def test_a_stale_label_is_cleared_at_startup() -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore("pod-a", "pod-b"), Clock()
    leader = _elector(leases, pods, clock, "pod-a")
    await leader.tick()
    # pod-b carries the label from a process that crashed while it led.
    pods.labels["pod-b"][LABEL] = "true"
    restarted = _elector(leases, pods, clock, "pod-b")
    await restarted.tick()  # a standby: pod-a's Lease is current
    assert await restarted.sync_pod_label()
    assert pods.labels["pod-b"] == {"app": "hush"}


async def test_a_new_leader_takes_the_label_from_the_dead_leaders_pod() -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore("pod-a", "pod-b"), Clock()
    leader, standby = _elector(leases, pods, clock, "pod-a"), _elector(leases, pods, clock, "pod-b")
    await leader.tick()
    await leader.sync_pod_label()
    await standby.tick()
    await standby.sync_pod_label()
    assert pods.labelled() == ["pod-a"]
    # pod-a's process is SIGKILLed: it neither renews nor removes its label.
    clock.monotonic = START + TIMING.lease_duration
    await standby.tick()
    assert standby.is_leader()
    assert await standby.sync_pod_label()
    assert pods.labelled() == ["pod-b"]


async def test_standing_down_removes_the_label() -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore("pod-a"), Clock()
    leader = _elector(leases, pods, clock, "pod-a")
    await leader.tick()
    await leader.sync_pod_label()
    assert leases.lease is not None
    leases.lease["spec"]["holderIdentity"] = "someone-else"
    leases.version += 1
    leases.lease["metadata"]["resourceVersion"] = str(leases.version)
    clock.monotonic += TIMING.renew_period
    await leader.tick()
    assert not leader.is_leader()
    assert await leader.sync_pod_label()
    assert pods.labelled() == []


async def test_a_leader_cut_off_from_the_apiserver_unlabels_as_soon_as_it_can() -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore("pod-a"), Clock()
    leader = _elector(leases, pods, clock, "pod-a")
    await leader.tick()
    await leader.sync_pod_label()
    leases.failing = pods.failing = True
    clock.monotonic = START + TIMING.renew_deadline  # is_leader() turns False by itself
    assert not leader.is_leader()
    assert not await leader.sync_pod_label()  # failed: retried on the next round
    assert pods.labelled() == ["pod-a"]
    pods.failing = False
    assert await leader.sync_pod_label()
    assert pods.labelled() == []


async def test_a_failed_label_write_is_retried_until_it_lands() -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore("pod-a", "pod-b"), Clock()
    pods.labels["pod-b"][LABEL] = "true"
    leader = _elector(leases, pods, clock, "pod-a")
    await leader.tick()
    pods.failing = True
    assert not await leader.sync_pod_label()
    pods.failing = False
    assert await leader.sync_pod_label()
    assert pods.labelled() == ["pod-a"]


async def test_a_missing_pod_is_reported_once_not_retried_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore(), Clock()
    leader = _elector(leases, pods, clock, "pod-gone")
    await leader.tick()
    with caplog.at_level(logging.WARNING):
        assert await leader.sync_pod_label()
        assert await leader.sync_pod_label()
    assert len(pods.patches) == 1
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"Found no Pod {NAMESPACE}/pod-gone to label {LABEL}")
    assert "is POD_NAME set from metadata.name?" in warning


async def test_a_clean_stop_unlabels_before_it_releases_the_lease() -> None:
    order: list[str] = []

    class OrderedLeases(MemoryLeaseStore):
        async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
            written = await super().replace(namespace, name, body)
            order.append(f"lease {leadership.holder_of(written) or 'released'}")
            return written

    leases, pods, clock = OrderedLeases(), MemoryPodStore("pod-a"), Clock()
    pods.log = order
    leader = _elector(leases, pods, clock, "pod-a")
    await leader.tick()
    await leader.sync_pod_label()
    await leader.stop()
    assert order == ["label pod-a true", "label pod-a None", "lease released"]
    assert pods.labelled() == []


async def test_without_a_pod_nothing_is_labelled() -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore("pod-a"), Clock()
    elector = leadership.Elector(
        leases,
        leadership.Settings(namespace=NAMESPACE, identity="host_1", timing=TIMING),
        pods=pods,
        monotonic=lambda: clock.monotonic,
        wall_clock=clock.wall,
    )
    await elector.tick()
    assert await elector.sync_pod_label()
    assert pods.patches == []


async def test_the_label_loop_follows_transitions_by_itself() -> None:
    leases, pods, clock = MemoryLeaseStore(), MemoryPodStore("pod-a"), Clock()
    leader = _elector(leases, pods, clock, "pod-a")
    leader.start()
    for _ in range(50):  # the fakes answer at once: a few loop turns run both loops
        await asyncio.sleep(0)
    assert leader.is_leader()
    assert pods.labelled() == ["pod-a"]
    await leader.stop()
    assert pods.labelled() == []


def test_the_pod_comes_from_the_downward_api() -> None:
    arguments = main.build_parser().parse_args(["operator", "--leader-election"])
    settings = operator_command.leader_election_settings(
        arguments, {"POD_NAMESPACE": NAMESPACE, "POD_NAME": "hush-operator-7d9f-x2"}, "id_1"
    )
    assert settings is not None
    assert settings.pod == leadership.PodRef(namespace=NAMESPACE, name="hush-operator-7d9f-x2")
    outside = operator_command.leader_election_settings(arguments, {}, "host_1")
    assert outside is not None
    assert outside.pod is None
