"""Lease-based leader election: which operator replica is the active accountant.

Every replica runs kopf (standalone) and serves the accountant's HTTPS port, but only the
holder of a ``coordination.k8s.io/v1`` Lease accepts spends; the others answer 503
("standby") to spends and to ``/readyz``, so a Kubernetes Service routes sidecars to the
holder alone. This module owns that choice: ``decide`` is the pure rule (given the Lease
as read, my identity, my monotonic clock and what I saw before: create, acquire, renew or
stand by), the ``build_*``/``claim``/``release`` functions are pure Lease builders, and
``Elector`` is the loop that applies them through ``hush.kube`` (every Lease write carries
the resourceVersion it read: compare-and-swap, so two replicas can never both win a round).
It deliberately does not pause kopf: every replica reconciles (see
docs/design/0008-leader-election.md for why that is safe).

Why correctness does not depend on the lease
--------------------------------------------
The lease is an optimisation, not a lock. Every PrivacyBudget status write, from any
replica, is a PUT carrying the resourceVersion the writer read (``writer.BudgetWriter``),
and every charge is acknowledged only after such a write succeeded. Two replicas that
both believe they lead (a paused process, clock trouble, a partition) therefore cannot lose
or double a charge: the second write to land on a version that the first already changed
gets 409, re-reads, and replays its operations against the newer ledger, where a retried
request id is found in the ledger's ``recent`` window and answered "duplicate" instead of
being charged again, and a charge that no longer fits is refused. What the lease buys is
fewer of those 409 rounds (one writer batches everything) and one place for sidecars to go.

Timing (client-go's semantics)
------------------------------
The leader renews every ``renew_period`` (2 s) and stops acting as leader when it has not
renewed for ``renew_deadline`` (6 s), counted from *before* its last successful write. A
standby counts a lease as expired when the record (its resourceVersion) has not changed for
``leaseDurationSeconds`` (8 s) *as measured by the standby's own monotonic clock from when
it first saw that record*; the timestamps inside the Lease are for humans only. So no
replica compares its clock with another's, and with 6 s < 8 s the old leader has stopped
before a standby may take over. A SIGKILLed leader is replaced within about 8-10 s; a
leader that shuts down cleanly releases the lease (empty holder) and is replaced at the
standby's next look (at most 2 s).

Identity is ``<hostname>_<pid>``: unique per process on one host and per pod in a cluster.
A container restarted in the same pod keeps its hostname and (as PID 1) its pid, so it
renews its own lease at once instead of waiting for it to expire: the process that held
it is gone.

The leader's pod label
----------------------
Every replica serves the admission webhooks and is Ready, so readiness cannot tell the
accountant Service which replica leads. Instead the leader labels its own pod
``hush.dev/accountant-leader=true`` (``Settings.pod``, from ``POD_NAME``/``POD_NAMESPACE``)
and the chart's accountant Service selects that label. The label is level-triggered, in its
own loop (so a slow pod patch never delays a Lease renewal): every ``renew_period``, and at
once after a transition, the pod is made to carry the label exactly while ``is_leader()``.
The first round removes a label left by an earlier process of the same pod (a crash never
removed it); a clean stop removes it before the Lease is released, so the Service stops
routing here before the next leader starts; and a new leader removes it from any other pod
that still carries it (a SIGKILLed or partitioned old leader), so the Service has one
endpoint. A stale label is only a detour, never a double spend: that replica answers 503
"standby" and compare-and-swap keeps the ledger exact (above).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from hush.kube import client

logger = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
DEFAULT_LEASE_NAME = "hush-operator"
LEADER_LABEL = "hush.dev/accountant-leader"
LEADER_LABEL_VALUE = "true"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timing:
    """Seconds; ``request_timeout < renew_deadline < lease_duration`` keeps leaders apart."""

    lease_duration: float = 8.0
    renew_period: float = 2.0
    renew_deadline: float = 6.0
    request_timeout: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "Leader election needs 0 < renew_period < renew_deadline < lease_duration, "
                f"got {self.renew_period}, {self.renew_deadline}, {self.lease_duration}"
            )
        if not 0 < self.request_timeout < self.renew_deadline:
            raise ValueError("Leader election needs 0 < request_timeout < renew_deadline")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PodRef:
    """The pod this replica runs in (the downward API's ``POD_NAMESPACE``/``POD_NAME``)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Which Lease to hold, and as whom (from ``hush operator`` flags)."""

    namespace: str
    name: str = DEFAULT_LEASE_NAME
    identity: str
    timing: Timing = dataclasses.field(default_factory=Timing)
    # Labelled LEADER_LABEL while this replica leads; None: no pod (a host process).
    pod: PodRef | None = None


def default_identity() -> str:
    return f"{socket.gethostname()}_{os.getpid()}"


# -- the pure rule ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Observation:
    """A Lease record as this replica last saw it, and when (by its own monotonic clock)."""

    resource_version: str
    holder: str
    seen_at: float


Action = Literal["create", "acquire", "renew", "stand-by"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    holder: str  # the holder as read; "" when nobody holds the lease
    observation: Observation | None  # what to remember for the next decision
    wait: float  # seconds until the next look, when this decision is acted on


def holder_of(lease: Mapping[str, Any]) -> str:
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def decide(
    lease: Mapping[str, Any] | None,
    *,
    identity: str,
    now: float,
    previous: Observation | None,
    timing: Timing,
) -> Decision:
    """What this replica should do about ``lease`` (None: it does not exist) at ``now``.

    ``now`` and ``previous.seen_at`` are readings of this replica's monotonic clock; the
    Lease's own timestamps are never compared with it (see the module docstring).
    """
    if lease is None:
        return Decision(action="create", holder="", observation=None, wait=timing.renew_period)
    holder = holder_of(lease)
    version = str(lease["metadata"]["resourceVersion"])
    unchanged = previous is not None and previous.resource_version == version
    seen_at = previous.seen_at if previous is not None and unchanged else now
    observation = Observation(resource_version=version, holder=holder, seen_at=seen_at)
    if holder == identity:
        return Decision(
            action="renew", holder=holder, observation=observation, wait=timing.renew_period
        )
    if not holder:
        return Decision(
            action="acquire", holder=holder, observation=observation, wait=timing.renew_period
        )
    expires_at = seen_at + lease_duration_of(lease, timing)
    if now >= expires_at:
        return Decision(
            action="acquire", holder=holder, observation=observation, wait=timing.renew_period
        )
    return Decision(
        action="stand-by",
        holder=holder,
        observation=observation,
        # Look again when it would expire, if that is sooner than the next regular look.
        wait=min(timing.renew_period, expires_at - now),
    )


def lease_duration_of(lease: Mapping[str, Any], timing: Timing) -> float:
    duration = (lease.get("spec") or {}).get("leaseDurationSeconds")
    return (
        float(duration)
        if isinstance(duration, int | float) and duration > 0
        else timing.lease_duration
    )


def micro_time(moment: datetime.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, UTC, exactly six fractional digits)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_lease(
    namespace: str, name: str, *, identity: str, now: datetime.datetime, timing: Timing
) -> dict[str, Any]:
    """A new Lease held by ``identity``."""
    stamp = micro_time(now)
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": math.ceil(timing.lease_duration),
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0,
        },
    }


def _put_body(lease: Mapping[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    metadata = {key: value for key, value in lease["metadata"].items() if key != "managedFields"}
    # The resourceVersion read is what makes the PUT a compare-and-swap.
    return {"apiVersion": LEASE_API_VERSION, "kind": "Lease", "metadata": metadata, "spec": spec}


def claim(
    lease: Mapping[str, Any], *, identity: str, now: datetime.datetime, timing: Timing
) -> dict[str, Any]:
    """The PUT body that renews ``lease`` for ``identity``, or takes it over."""
    spec = dict(lease.get("spec") or {})
    stamp = micro_time(now)
    if holder_of(lease) != identity:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    spec["holderIdentity"] = identity
    spec["leaseDurationSeconds"] = math.ceil(timing.lease_duration)
    spec["renewTime"] = stamp
    return _put_body(lease, spec)


def release(lease: Mapping[str, Any], *, now: datetime.datetime) -> dict[str, Any]:
    """The PUT body that gives ``lease`` up: no holder, so a standby takes it at once."""
    spec = dict(lease.get("spec") or {})
    spec["holderIdentity"] = ""
    spec["leaseDurationSeconds"] = 1  # the API requires a positive duration
    spec["renewTime"] = micro_time(now)
    return _put_body(lease, spec)


def leader_label_patch(*, leading: bool) -> dict[str, str | None]:
    """The pod labels to merge-patch: the leader label, or its removal (None)."""
    return {LEADER_LABEL: LEADER_LABEL_VALUE if leading else None}


LEADER_LABEL_SELECTOR = f"{LEADER_LABEL}={LEADER_LABEL_VALUE}"


# -- the loop ----------------------------------------------------------------------------------


class LeaseStore(Protocol):
    """The Lease calls the elector needs (``hush.kube`` in production)."""

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


class KubeLeaseStore:
    """``LeaseStore`` over the real API; every call is bounded by ``timeout`` seconds."""

    def __init__(self, *, timeout: float) -> None:
        self._timeout = timeout

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(client.read_lease, namespace, name, timeout=self._timeout)

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(client.create_lease, namespace, body, timeout=self._timeout)

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(
            client.replace_lease, namespace, name, body, timeout=self._timeout
        )


class PodStore(Protocol):
    """The pod calls the elector needs for its label (``hush.kube`` in production)."""

    async def patch_labels(
        self, namespace: str, name: str, labels: Mapping[str, str | None]
    ) -> None:
        """Merge-patch ``labels`` (None removes one); ``client.ObjectGoneError`` if no pod."""
        ...

    async def names_with_labels(self, namespace: str, selector: str) -> list[str]: ...


class KubePodStore:
    """``PodStore`` over the real API; every call is bounded by ``timeout`` seconds."""

    def __init__(self, *, timeout: float) -> None:
        self._timeout = timeout

    async def patch_labels(
        self, namespace: str, name: str, labels: Mapping[str, str | None]
    ) -> None:
        await asyncio.to_thread(
            client.patch_pod_labels, namespace, name, labels, timeout=self._timeout
        )

    async def names_with_labels(self, namespace: str, selector: str) -> list[str]:
        return await asyncio.to_thread(
            client.list_pod_names, namespace, label_selector=selector, timeout=self._timeout
        )


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Elector:
    """Holds (or waits for) one Lease; ``is_leader()`` is exact at every call.

    ``on_started_leading`` and ``on_stopped_leading`` are called on transitions (from the
    loop, or from ``stop``); ``is_leader`` does not wait for them: it turns False by
    itself once ``renew_deadline`` has passed since the start of the last successful
    renewal, even if the loop is stuck in an API call.

    With ``settings.pod`` and ``pods``, a second loop keeps the pod's leader label equal to
    ``is_leader()`` (``sync_pod_label``; see the module docstring).
    """

    def __init__(
        self,
        store: LeaseStore,
        settings: Settings,
        *,
        pods: PodStore | None = None,
        on_started_leading: Callable[[], None] = lambda: None,
        on_stopped_leading: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._settings = settings
        self._timing = settings.timing
        self._on_started_leading = on_started_leading
        self._on_stopped_leading = on_stopped_leading
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._observation: Observation | None = None
        self._leading = False
        self._valid_until = 0.0
        self._last_holder: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._pods = pods if settings.pod is not None else None
        # Whether our pod carries the label, as far as we know (None: not known yet, so the
        # first round writes either way); whether other pods were cleared since we lead.
        self._labelled: bool | None = None
        self._others_cleared = False
        self._label_wanted = asyncio.Event()
        self._label_task: asyncio.Task[None] | None = None

    @property
    def identity(self) -> str:
        return self._settings.identity

    @property
    def lease(self) -> str:
        return f"{self._settings.namespace}/{self._settings.name}"

    def is_leader(self) -> bool:
        return self._leading and self._monotonic() < self._valid_until

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"leader-election {self.lease}")
        if self._pods is not None and self._label_task is None:
            self._label_task = asyncio.create_task(
                self._run_pod_label(), name=f"leader label {self._settings.pod}"
            )

    async def stop(self) -> None:
        """Stop the loops; if leading, stand down first, remove the pod's label, then
        release the Lease (so the Service has stopped routing here before a standby leads)."""
        for task in (self._task, self._label_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._label_task = None
        leading = self._leading
        if leading:
            self._stand_down("the operator is stopping", level=logging.INFO)
        # Failures are logged by sync_pod_label; the next leader clears a label left behind.
        with contextlib.suppress(Exception):
            await self.sync_pod_label()
        if not leading:
            return
        try:
            lease = await self._store.read(self._settings.namespace, self._settings.name)
            if lease is not None and holder_of(lease) == self.identity:
                await self._store.replace(
                    self._settings.namespace,
                    self._settings.name,
                    release(lease, now=self._wall_clock()),
                )
                logger.info("Released Lease %s", self.lease, extra=self._log_fields())
        except Exception as error:  # the lease then expires by itself
            logger.warning(
                "Failed to release Lease %s: %s", self.lease, error, extra=self._log_fields()
            )

    async def sync_pod_label(self) -> bool:
        """One round of the label loop: make our pod carry the leader label exactly while
        ``is_leader()``, and once leading, remove it from every other pod. True when done;
        False when a write failed (logged; the next round tries again)."""
        pod, pods = self._settings.pod, self._pods
        if pod is None or pods is None:
            return True
        leading = self.is_leader()
        if not leading:
            self._others_cleared = False
        if self._labelled != leading:
            try:
                await pods.patch_labels(
                    pod.namespace, pod.name, leader_label_patch(leading=leading)
                )
            except client.ObjectGoneError:
                # Nothing to label (POD_NAME names no pod): say so once per transition.
                logger.warning(
                    "Found no Pod %s to label %s: the accountant Service cannot select this "
                    "replica (is POD_NAME set from metadata.name?)",
                    pod,
                    LEADER_LABEL,
                    extra=self._log_fields(pod=str(pod)),
                )
            except Exception as error:
                logger.warning(
                    "Failed to %s label %s on Pod %s: %s",
                    "set" if leading else "remove",
                    LEADER_LABEL,
                    pod,
                    error,
                    extra=self._log_fields(pod=str(pod)),
                )
                return False
            else:
                logger.info(
                    "Set label %s on Pod %s" if leading else "Removed label %s from Pod %s",
                    LEADER_LABEL,
                    pod,
                    extra=self._log_fields(pod=str(pod)),
                )
            self._labelled = leading
        if leading and not self._others_cleared:
            return await self._clear_other_pods(pod, pods)
        return True

    async def _clear_other_pods(self, pod: PodRef, pods: PodStore) -> bool:
        """Remove the label from pods of earlier leaders that could not remove it."""
        try:
            for name in await pods.names_with_labels(pod.namespace, LEADER_LABEL_SELECTOR):
                if name == pod.name:
                    continue
                with contextlib.suppress(client.ObjectGoneError):
                    await pods.patch_labels(pod.namespace, name, leader_label_patch(leading=False))
                    logger.info(
                        "Removed label %s from Pod %s/%s (an earlier leader's)",
                        LEADER_LABEL,
                        pod.namespace,
                        name,
                        extra=self._log_fields(pod=f"{pod.namespace}/{name}"),
                    )
        except Exception as error:
            logger.warning(
                "Failed to remove label %s from other pods in %s: %s",
                LEADER_LABEL,
                pod.namespace,
                error,
                extra=self._log_fields(),
            )
            return False
        self._others_cleared = True
        return True

    async def _run_pod_label(self) -> None:
        while True:
            self._label_wanted.clear()
            try:
                await self.sync_pod_label()
            except Exception:  # a dead loop would leave the Service pointing nowhere
                logger.exception("Failed a leader-label round", extra=self._log_fields())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._label_wanted.wait(), self._timing.renew_period)

    async def _run(self) -> None:
        while True:
            try:
                wait = await self.tick()
            except Exception:  # a dead loop would leave this replica a standby for good
                logger.exception("Failed a leader-election round", extra=self._log_fields())
                wait = self._timing.renew_period
            await asyncio.sleep(wait)

    async def tick(self) -> float:
        """One round: read, decide, write if needed. Returns seconds until the next round."""
        started = self._monotonic()
        if self._leading and started >= self._valid_until:
            self._stand_down(f"the Lease was not renewed within {self._timing.renew_deadline:g}s")
        namespace, name = self._settings.namespace, self._settings.name
        try:
            lease = await self._store.read(namespace, name)
        except Exception as error:
            logger.warning(
                "Failed to read Lease %s: %s", self.lease, error, extra=self._log_fields()
            )
            return self._timing.renew_period
        decision = decide(
            lease,
            identity=self.identity,
            now=started,
            previous=self._observation,
            timing=self._timing,
        )
        self._observation = decision.observation
        if decision.action == "stand-by":
            if self._leading:
                self._stand_down(f"the Lease is now held by {decision.holder}")
            if decision.holder != self._last_holder:
                logger.info(
                    "Stood by: Lease %s is held by %s",
                    self.lease,
                    decision.holder,
                    extra=self._log_fields(holder=decision.holder),
                )
                self._last_holder = decision.holder
            return decision.wait
        now = self._wall_clock()
        try:
            if lease is None:
                body = build_lease(
                    namespace, name, identity=self.identity, now=now, timing=self._timing
                )
                written = await self._store.create(namespace, body)
            else:
                body = claim(lease, identity=self.identity, now=now, timing=self._timing)
                written = await self._store.replace(namespace, name, body)
        except client.ConflictError:
            # Another replica wrote first; the next read shows who holds the lease now.
            logger.debug("Lost a write race on Lease %s", self.lease, extra=self._log_fields())
            return self._timing.renew_period
        except Exception as error:
            logger.warning(
                "Failed to write Lease %s: %s", self.lease, error, extra=self._log_fields()
            )
            return self._timing.renew_period
        self._observation = Observation(
            resource_version=str(written["metadata"]["resourceVersion"]),
            holder=self.identity,
            seen_at=started,
        )
        self._valid_until = started + self._timing.renew_deadline
        self._last_holder = self.identity
        if not self._leading:
            self._leading = True
            logger.info(
                "Acquired Lease %s as %s (previous holder: %s)",
                self.lease,
                self.identity,
                decision.holder or "none",
                extra=self._log_fields(previous_holder=decision.holder),
            )
            self._on_started_leading()
            self._label_wanted.set()
        return decision.wait

    def _stand_down(self, why: str, *, level: int = logging.WARNING) -> None:
        self._leading = False
        self._valid_until = 0.0
        self._last_holder = None
        logger.log(level, "Stopped leading Lease %s: %s", self.lease, why, extra=self._log_fields())
        self._on_stopped_leading()
        self._label_wanted.set()

    def _log_fields(self, **more: str) -> dict[str, str]:
        return {"lease": self.lease, "identity": self.identity, **more}
