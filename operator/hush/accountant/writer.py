"""Group commit: one writer per budget turns a burst of charges into few status writes.

Every operation (reserve, commit, release, or a plain status refresh) is queued with a
future. The writer takes everything queued, reads the budget (or reuses the object it last
wrote), applies the operations to a ``Book`` in order, computes the whole status, and
writes it with ``PUT .../status`` carrying the resourceVersion it read: a compare-and-swap.
Only when that write succeeded are the futures resolved, so no caller ever acts on a charge
that is not durable (invariant 1: charge before release). If the write loses a race (409,
e.g. another replica or kopf's annotation write got there first), the writer re-reads and
replays the same operations against the newer ledger; decisions may change (a charge that
fitted may no longer fit), which is exactly what keeps the total under the cap (invariant
2) with any number of writers.

Batch size is bounded so that one write stays small and fast; see docs/benchmarks.md for
what batching buys.

Gathering. Callers such as sidecars keep one request in flight each: the moment a write
returns, the callers it answered send their next operation, a millisecond or two later.
A writer that starts the next write at once takes only what queued *during* the last write
and leaves the answered callers for the write after; the callers settle into cohorts that
take turns, each batch holds a fraction of them and every charge waits several writes.
So before a write the writer waits until as many operations are queued as were active
around the last write (the batch it answered plus what queued meanwhile), for as long as
they keep coming: it gives up when none arrived for ``GATHER_SECONDS`` (the gap), or after
``GATHER_MAX_SECONDS`` in all. Fifty callers take 15 to 20 ms to be answered and to send again
on a busy 2-core machine, each a fraction of a millisecond after the last, so a fixed
window either cut them in two when the machine slowed down (a 5 ms window: 37 operations
per write instead of 49 in some runs) or had to be long for everybody; a gap waits exactly
as long as the callers keep arriving. With one caller the target is one operation and
nothing waits; a caller that went away costs one gap, after which the estimate follows the
smaller batch.

Leases (docs/design/0021-leases.md). Every batch first writes off the open leases past their
expiry (``Book.expire_leases``), so a lease is closed by whatever operation comes next. So
that a crashed sidecar's lease is written off even when nothing else happens on the budget,
after each write the writer arms a timer for the first open lease's expiry and then submits
a no-op through the same queue ("sweep"). Write-offs are logged and counted in
``hush_ledger_leases_written_off``.

Only the active replica records spends (``leadership``): the registry's ``spending_refusal``
says why not, when this replica may not, and is checked when an operation is submitted and
again after each read, before the batch is applied. Queued spends fail with 503 the moment
leadership is lost (``fail_queued_spends``); refreshes (kopf's reconciliations) still pass,
since every status write is compare-and-swap whichever replica makes it. A batch whose
write is already on its way may still land after leadership was lost: it is acknowledged
only if it won the compare-and-swap, so its answers are as true as any.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import pydantic

from hush.api import common, privacybudget
from hush.api import ledger as wire
from hush.kube import client
from hush.ledger import book, limits, windows
from hush.observability import metrics
from hush.reconcile import privacybudget as budget_status

logger = logging.getLogger(__name__)

# Operations per group commit. HUSH_LEDGER_MAX_BATCH=1 gives one write per charge: the
# baseline that `make bench` compares group commit against.
MAX_BATCH = int(os.environ.get("HUSH_LEDGER_MAX_BATCH", "512"))
MAX_CONFLICT_RETRIES = 20
# How long a write waits for the callers its last write answered (see "Gathering"): until
# none arrived for GATHER_SECONDS, at most GATHER_MAX_SECONDS. HUSH_LEDGER_GATHER_MS=0
# starts every write at once.
GATHER_SECONDS = float(os.environ.get("HUSH_LEDGER_GATHER_MS", "5")) / 1000
GATHER_MAX_SECONDS = float(os.environ.get("HUSH_LEDGER_GATHER_MAX_MS", "40")) / 1000
# How long a deferrable lease report may wait to share a write (docs/design/0021): a report
# whose sidecar still holds units is not urgent, and every status write costs the apiserver
# tens of milliseconds of CPU whatever it carries. HUSH_LEASE_DEFER_MS=0 writes them at once.
DEFER_SECONDS = float(os.environ.get("HUSH_LEASE_DEFER_MS", "250")) / 1000

# A lease's expiry is checked at the sweep this long after it (clocks and timers are coarse).
SWEEP_MARGIN_SECONDS = 0.25

Operation = Callable[[book.Book, datetime.datetime], book.Outcome]


def _sweep(working: book.Book, now: datetime.datetime) -> book.Outcome:
    """The no-op whose batch writes off expired leases (every batch does, first)."""
    return book.Outcome(code="swept", ok=True, message="Wrote off expired leases")


class BudgetStore(Protocol):
    """The two API calls the writer needs (``hush.kube`` in production)."""

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def write_status(self, body: dict[str, Any]) -> dict[str, Any]: ...


class KubeBudgetStore:
    """``BudgetStore`` over the real API (blocking client calls run in a thread)."""

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(
            client.read_custom,
            group=common.API_GROUP,
            version=common.API_VERSION,
            plural="privacybudgets",
            namespace=namespace,
            name=name,
        )

    async def write_status(self, body: dict[str, Any]) -> dict[str, Any]:
        metadata = body["metadata"]
        return await asyncio.to_thread(
            client.replace_custom_status,
            group=common.API_GROUP,
            version=common.API_VERSION,
            plural="privacybudgets",
            namespace=metadata["namespace"],
            name=metadata["name"],
            body=body,
        )


class BudgetUnavailableError(Exception):
    """The budget cannot take charges now (missing, invalid, or writes keep failing)."""

    def __init__(self, message: str, *, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class _Pending:
    operation: Operation | None  # None: only refresh the status
    future: asyncio.Future[book.Outcome | None]
    # Loop time before which this operation need not be written (deferrable lease reports).
    not_before: float = 0.0


def parse_ledger(status: Mapping[str, Any]) -> wire.Ledger:
    raw = status.get("ledger")
    if not raw:
        return wire.Ledger()
    return wire.Ledger.model_validate(raw)


def _always_spend() -> str | None:
    return None


class BudgetWriter:
    """The single in-process writer of one PrivacyBudget's status."""

    def __init__(
        self,
        store: BudgetStore,
        namespace: str,
        name: str,
        *,
        clock: Callable[[], datetime.datetime],
        on_written: Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]] | None = None,
        spending_refusal: Callable[[], str | None] = _always_spend,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._name = name
        self._clock = clock
        self._on_written = on_written
        self._spending_refusal = spending_refusal
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._cached: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._limits_cache: tuple[privacybudget.PrivacyBudgetSpec, book.Limits] | None = None
        # Operations active around the last write, and the wait for as many to queue again.
        self._active = 1
        self._gathered: asyncio.Future[None] | None = None
        self._last_arrival = 0.0
        self.writes = 0
        self.conflicts = 0
        # Leases written off and the first open lease's expiry, from the last ``_apply``.
        self._written_off: list[wire.Lease] = []
        self._next_expiry: datetime.datetime | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweeps: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"budget-writer {self._namespace}/{self._name}"
            )

    async def stop(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for sweep in list(self._sweeps):
            sweep.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(BudgetUnavailableError("The operator is stopping"))
        self._queue.clear()

    async def submit(self, operation: Operation, *, deferrable: bool = False) -> book.Outcome:
        """Apply ``operation`` in a group commit; return once it is durable.

        A ``deferrable`` operation (a lease report whose sidecar still holds units) may
        wait up to ``DEFER_SECONDS`` for others to share its write, unless something that
        cannot wait is written first.
        """
        refusal = self._spending_refusal()
        if refusal is not None:
            raise BudgetUnavailableError(refusal)
        outcome = await self._enqueue(operation, defer=DEFER_SECONDS if deferrable else 0.0)
        if outcome is None:  # pragma: no cover - only refreshes resolve to None
            raise BudgetUnavailableError("No outcome")
        return outcome

    async def refresh(self) -> None:
        """Recompute and write the status (after a spec change), through the same queue."""
        self._cached = None
        await self._enqueue(None)

    def fail_queued_spends(self, reason: str) -> None:
        """Fail every spend still waiting for a batch with 503; refreshes stay queued."""
        kept: list[_Pending] = []
        for pending in self._queue:
            if pending.operation is None:
                kept.append(pending)
            elif not pending.future.done():
                pending.future.set_exception(BudgetUnavailableError(reason))
        self._queue = kept

    def forget_cached(self) -> None:
        """Read the budget afresh before the next write (another replica may have written)."""
        self._cached = None

    def _admitted(self, batch: list[_Pending]) -> list[_Pending]:
        """``batch`` without its spends, failed with 503, when spending is refused now."""
        refusal = self._spending_refusal()
        if refusal is None:
            return batch
        for pending in batch:
            if pending.operation is not None and not pending.future.done():
                pending.future.set_exception(BudgetUnavailableError(refusal))
        return [pending for pending in batch if pending.operation is None]

    async def _enqueue(
        self, operation: Operation | None, *, defer: float = 0.0
    ) -> book.Outcome | None:
        self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[book.Outcome | None] = loop.create_future()
        self._queue.append(_Pending(operation, future, loop.time() + defer))
        self._last_arrival = loop.time()
        self._wakeup.set()
        gathered = self._gathered
        if gathered is not None and not gathered.done() and len(self._queue) >= self._target():
            gathered.set_result(None)
        return await future

    def _target(self) -> int:
        return min(self._active, MAX_BATCH)

    async def _defer(self) -> None:
        """While every queued operation may still wait, wait: until the first must be
        written, or an operation that cannot wait arrives (each arrival sets the wakeup)."""
        loop = asyncio.get_running_loop()
        while self._queue:
            first = min(pending.not_before for pending in self._queue)
            if first <= loop.time():
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), first - loop.time())

    async def _gather(self) -> None:
        """Wait until the active callers have queued again, while they keep arriving."""
        if GATHER_SECONDS <= 0 or len(self._queue) >= self._target():
            return
        loop = asyncio.get_running_loop()
        self._gathered = gathered = loop.create_future()
        started = loop.time()
        deadline = started + GATHER_MAX_SECONDS
        timer: asyncio.TimerHandle | None = None

        def look() -> None:
            nonlocal timer
            if gathered.done():
                return
            now = loop.time()
            # The gap counts from the start of the wait too: operations that queued during
            # the last write came long ago, and the callers it answered have only now been
            # answered (giving up at once would keep two cohorts taking turns).
            quiet_until = max(self._last_arrival, started) + GATHER_SECONDS
            if now >= deadline or now >= quiet_until:
                gathered.set_result(None)  # nobody came for a whole gap, or time is up
            else:
                timer = loop.call_at(min(quiet_until, deadline), look)

        timer = loop.call_at(min(started + GATHER_SECONDS, deadline), look)
        try:
            await gathered
        finally:
            if timer is not None:
                timer.cancel()
            self._gathered = None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._defer()
                await self._gather()
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    resolved = await self._commit(batch)
                except Exception as error:
                    failure = (
                        error
                        if isinstance(error, BudgetUnavailableError)
                        else BudgetUnavailableError(f"Could not record the charge: {error}")
                    )
                    if not isinstance(error, BudgetUnavailableError):
                        logger.exception("Failed to write PrivacyBudget %s", self._name)
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(failure)
                    continue
                for pending, outcome in resolved:
                    if not pending.future.done():
                        pending.future.set_result(outcome)
                self._active = max(1, len(batch) + len(self._queue))

    async def _commit(self, batch: list[_Pending]) -> list[tuple[_Pending, book.Outcome | None]]:
        for _ in range(MAX_CONFLICT_RETRIES):
            batch = self._admitted(batch)
            if not batch:
                return []
            current = self._cached or await self._store.read(self._namespace, self._name)
            if current is None:
                raise BudgetUnavailableError(
                    f"PrivacyBudget {self._namespace}/{self._name} does not exist", status=404
                )
            # Leadership may have been lost while the read was on its way.
            batch = self._admitted(batch)
            if not batch:
                return []
            body, outcomes = self._apply(current, batch)
            resolved = list(zip(batch, outcomes, strict=True))
            if all(pending.operation is None for pending in batch) and body["status"] == (
                current.get("status") or {}
            ):
                self._cached = current
                # Not written, but a reconciliation after a restart must still arm the
                # sweep for the open leases it found.
                self._arm_sweep(self._next_expiry)
                return resolved  # a refresh that changes nothing is not written
            started = time.perf_counter()
            try:
                written = await self._store.write_status(body)
            except client.ConflictError:
                self.conflicts += 1
                metrics.STATUS_WRITES.labels(self._namespace, self._name, "conflict").inc()
                self._cached = None
                continue
            except client.ObjectGoneError as error:
                self._cached = None
                raise BudgetUnavailableError(str(error), status=404) from error
            self.writes += 1
            ledger = (written.get("status") or {}).get("ledger") or {}
            logger.info(
                "Committed operations to PrivacyBudget",
                extra={
                    "budget": f"{self._namespace}/{self._name}",
                    "operations": len(batch),
                    "write_ms": round((time.perf_counter() - started) * 1000, 1),
                    "sequence": ledger.get("sequence"),
                    "head_hash": ledger.get("headHash"),
                },
            )
            metrics.STATUS_WRITES.labels(self._namespace, self._name, "written").inc()
            metrics.BATCH_SIZE.observe(len(batch))
            for lease in self._written_off:
                logger.info(
                    "Wrote off expired lease",
                    extra={
                        "budget": f"{self._namespace}/{self._name}",
                        "lease": lease.lease_id,
                        "pod": lease.consumer.pod,
                        "releases": lease.releases,
                    },
                )
                metrics.LEASES_WRITTEN_OFF.labels(
                    self._namespace, self._name, lease.consumer.team
                ).inc()
            self._arm_sweep(self._next_expiry)
            _publish_gauges(self._namespace, self._name, written)
            self._cached = written
            if self._on_written is not None:
                await self._on_written(current, written)
            return resolved
        raise BudgetUnavailableError(
            f"PrivacyBudget {self._name} kept changing under {MAX_CONFLICT_RETRIES} writes"
        )

    def _arm_sweep(self, expiry: datetime.datetime | None) -> None:
        """Sweep once the first open lease has expired (nothing to do without leases)."""
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if expiry is None:
            return
        delay = max((expiry - self._clock()).total_seconds(), 0.0) + SWEEP_MARGIN_SECONDS
        self._sweep_timer = asyncio.get_running_loop().call_later(delay, self._start_sweep)

    def _start_sweep(self) -> None:
        self._sweep_timer = None
        task = asyncio.create_task(self._sweep_expired())
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def _sweep_expired(self) -> None:
        try:
            await self.submit(_sweep)
        except BudgetUnavailableError as error:
            # A standby replica (or a missing budget): the active writer sweeps on its next
            # batch, whatever that batch is.
            logger.info("Skipped the lease sweep", extra={"budget": self._name, "why": str(error)})

    def _limits_for(self, spec: privacybudget.PrivacyBudgetSpec) -> book.Limits:
        # Capacities cost milliseconds (RDP converts at 46 orders); specs rarely change.
        if self._limits_cache is None or self._limits_cache[0] != spec:
            self._limits_cache = (spec, limits.limits_for(spec))
        return self._limits_cache[1]

    def _apply(
        self, current: dict[str, Any], batch: list[_Pending]
    ) -> tuple[dict[str, Any], list[book.Outcome | None]]:
        now = self._clock()
        status = dict(current.get("status") or {})
        generation = int(current["metadata"].get("generation", 0))
        try:
            spec = privacybudget.PrivacyBudgetSpec.model_validate(current.get("spec") or {})
            ledger = parse_ledger(status)
        except pydantic.ValidationError as error:
            raise BudgetUnavailableError(
                f"PrivacyBudget {self._name} cannot be read: {error.error_count()} problem(s)",
                status=409,
            ) from error
        accepted = not budget_status.spec_problems(spec)
        mode_changed = ledger.sequence > 0 and ledger.accounting not in ("", spec.accounting)
        working = book.Book(ledger, self._limits_for(spec))
        # Windows count from the declared renewal.anchor (windows.current_window).
        window = windows.current_window(
            spec.renewal, created=current["metadata"].get("creationTimestamp"), now=now
        )
        if window is not None and accepted:
            working.renew(window, now)
        self._written_off = working.expire_leases(now) if accepted else []
        outcomes: list[book.Outcome | None] = []
        for pending in batch:
            if pending.operation is None:
                outcomes.append(None)
            elif not accepted or mode_changed:
                outcomes.append(
                    book.Outcome(
                        code="exhausted",
                        ok=False,
                        message=f"PrivacyBudget {self._name} is not Ready: no charges accepted",
                    )
                )
            else:
                outcomes.append(pending.operation(working, now))
        self._next_expiry = working.next_expiry()
        new_status = budget_status.evaluate(
            current.get("spec") or {},
            generation=generation,
            status=status,
            ledger=working.snapshot(),
            now=now,
        )
        body = {
            "apiVersion": current["apiVersion"],
            "kind": current["kind"],
            "metadata": {
                "name": current["metadata"]["name"],
                "namespace": current["metadata"]["namespace"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
            "spec": current.get("spec") or {},
            "status": new_status.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        return body, outcomes


def _publish_gauges(namespace: str, name: str, written: Mapping[str, Any]) -> None:
    status = written.get("status") or {}
    sections = [("", status.get("epsilon") or {})]
    sections += [
        (team.get("team", ""), team.get("epsilon") or {}) for team in status.get("teams", [])
    ]
    for team, section in sections:
        try:
            spent = float(section.get("spent", "nan"))
            remaining = float(section.get("remaining", "nan"))
        except ValueError:
            continue
        metrics.EPSILON_SPENT.labels(namespace, name, team).set(spent)
        metrics.EPSILON_REMAINING.labels(namespace, name, team).set(remaining)


class WriterRegistry:
    """One writer per budget, created on first use.

    ``spending_refusal`` returns why this replica may not record spends now (it is not the
    active accountant), or None when it may; the default always allows them.
    """

    def __init__(
        self,
        store: BudgetStore,
        *,
        clock: Callable[[], datetime.datetime],
        on_written: Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]] | None = None,
        spending_refusal: Callable[[], str | None] = _always_spend,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_written = on_written
        self._spending_refusal = spending_refusal
        self._writers: dict[tuple[str, str], BudgetWriter] = {}

    def writer(self, namespace: str, name: str) -> BudgetWriter:
        key = (namespace, name)
        if key not in self._writers:
            self._writers[key] = BudgetWriter(
                self._store,
                namespace,
                name,
                clock=self._clock,
                on_written=self._on_written,
                spending_refusal=self._spending_refusal,
            )
        return self._writers[key]

    def fail_queued_spends(self, reason: str) -> None:
        """Leadership was lost: answer every queued spend with 503 now, not after a write."""
        for writer in self._writers.values():
            writer.fail_queued_spends(reason)

    def forget_cached(self) -> None:
        """Leadership was gained: the budgets may have changed under another leader."""
        for writer in self._writers.values():
            writer.forget_cached()

    async def forget(self, namespace: str, name: str) -> None:
        writer = self._writers.pop((namespace, name), None)
        if writer is not None:
            await writer.stop()

    async def stop(self) -> None:
        for writer in list(self._writers.values()):
            await writer.stop()
        self._writers.clear()
