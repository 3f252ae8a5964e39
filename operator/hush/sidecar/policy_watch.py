"""Whether this pod's baked policy is still current: polled, and sticky once stale.

Invariant 6: a pod whose policy changed must stop releasing, so a privacy-relevant change is
all-or-nothing. The accountant already refuses a charge that carries a stale hash, but that
is noticed only on the next charge, and until then the pod looks ready and keeps receiving
traffic. So the sidecar also asks the accountant (``GET /v1/policy-status``, authenticated
with the pod's token, cheap: the accountant caches the token review and the policy and
forgets the policy on every watch event of it) every ``interval`` seconds, from start-up on.
Once the answer is "stale" (or the policy is gone), ``stale_reason`` is set for good:
``/readyz`` answers 503, covered routes answer 503 ``stale-policy``, and the rollout
replaces the pod. The same state is set when a charge is refused as stale.

A failed poll (accountant unreachable, refused) changes nothing: it is logged and counted,
and releasing stays safe because every release is still charged, with the hash, first.

Owns the stale state and the polling task; the HTTP calls are ``accountant_client``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from hush.sidecar import accountant_client
from hush.sidecar import metrics as sidecar_metrics

logger = structlog.get_logger("hush.sidecar")


class PolicyStatusSource(Protocol):
    async def policy_status(
        self, *, policy: str, policy_hash: str
    ) -> accountant_client.PolicyStatus: ...


class PolicyWatch:
    """The stale flag of one pod's policy, and the task that polls it."""

    def __init__(
        self,
        *,
        policy_name: str,
        policy_hash: str,
        source: PolicyStatusSource,
        interval_seconds: float | None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval_seconds is not None and interval_seconds <= 0:
            raise ValueError("the policy check interval must be positive")
        self._policy_name = policy_name
        self._policy_hash = policy_hash
        self._source = source
        self._interval = interval_seconds
        self._sleep = sleep
        self._stale_reason: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def stale_reason(self) -> str | None:
        """Why this pod may no longer release, or None while its policy is current."""
        return self._stale_reason

    def mark_stale(self, message: str, *, request_id: str | None = None) -> None:
        if self._stale_reason is None:
            logger.warning(
                "Stopped releasing: the policy is stale",
                policy=self._policy_name,
                policy_hash=self._policy_hash,
                request_id=request_id,
            )
            self._stale_reason = message

    async def check(self) -> None:
        """Ask once; mark the policy stale if the accountant says so."""
        if self._stale_reason is not None:
            return
        try:
            status = await self._source.policy_status(
                policy=self._policy_name, policy_hash=self._policy_hash
            )
        except accountant_client.AccountantError as error:
            sidecar_metrics.POLICY_CHECKS.labels("failed").inc()
            logger.warning("Could not check the policy hash", reason=error.reason)
            return
        sidecar_metrics.POLICY_CHECKS.labels("stale" if status.stale else "current").inc()
        if status.stale:
            self.mark_stale(status.message)

    def start(self) -> None:
        """Poll every interval from now on, until stale or ``stop`` (None: never poll)."""
        if self._interval is not None and self._task is None:
            self._task = asyncio.create_task(self._poll(self._interval))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self, interval: float) -> None:
        while self._stale_reason is None:
            await self.check()
            if self._stale_reason is None:
                await self._sleep(interval)
