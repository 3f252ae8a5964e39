"""Pure ledger transitions: charge, renewal, compaction.

A ``Book`` is a working copy of one budget's ledger plus the limits it must respect. The
accountant loads a Book from the budget's status, applies a batch of operations, writes
``book.snapshot()`` back with compare-and-swap, and only then acknowledges the batch
(group commit). If the write loses a race, it reloads and replays: every decision is a
function of the ledger it is applied to.

Rules (ARCHITECTURE.md, "Spending protocol"):
- a charge must fit both its team's quota and the dataset's total (Big Bird, SOSP'25:
  per-team budgets alone are unsound);
- a charge is final: there is no refund (docs/design/0018). Ledgers written under the old
  reserve/commit/release protocol may still hold open reservations and "released" request
  ids; both are kept as they are (an open reservation stays counted as spent, and a charge
  retried under a released id is refused), never closed or refunded;
- request ids make retries idempotent: a repeated charge is answered from the ledger and
  never charged twice, for as long as the id is in the bounded ``recent`` window;
- ``enforcement: warn`` grants charges past the budget but reports them as over budget.

Leases (docs/design/0021-leases.md; ARCHITECTURE.md, "Spending protocol: leases"): a lease
is an escrowed charge. Granting one records its full amount as spent (checked against the
team's quota and the dataset's total, like a charge) before the sidecar may spend any of it;
the sidecar spends it locally and reports its releases, each priced from the policy here and
never from the report; a report that would use more than the lease holds is refused. Renewal
(a report that asks for more) tops the lease up and extends it; settling returns what was
not used; a lease still open at its expiry is written off: its unused units stay spent, which
over-counts and is therefore sound. Sizes shrink with what remains: never more than
remaining ÷ (2 x active holders), one release near exhaustion, and at least one release
whenever one fits, so a budget drains exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import functools
import hashlib
from collections.abc import Mapping
from typing import Literal, NamedTuple

from hush.api import ledger as wire
from hush.ledger import chain
from hush.privacy import accounting, amounts

# Compaction keeps this many newest entries and folds the rest into the checkpoint once
# the ledger holds more than ``wire.MAX_ENTRIES - COMPACTION_SLACK`` entries. Every entry
# in status costs on every status write (about 20 JSON nodes each); keeping 4 rather than 8
# gave +3.5 % charges/s at 50 clients (docs/design/0016-compact-request-window.md).
KEEP_ENTRIES = 4
COMPACTION_SLACK = 8

OutcomeCode = Literal[
    "granted",
    "duplicate",
    "already-released",
    "exhausted",
    "no-quota",
    "under-noised",
    "unaccountable",
    # leases
    "leased",
    "reported",
    "settled",
    "beyond-lease",
    "out-of-order",
    "unknown-lease",
    "not-your-lease",
    "expired",
    "too-many-leases",
    "swept",
]

# How long a lease lives unless renewed, and the bounds a caller may ask for: long enough
# for a sidecar to report and renew a few times, short enough that a crashed pod's lease
# comes back (as written off) within tens of seconds.
LEASE_SECONDS = 30
MIN_LEASE_SECONDS = 1
MAX_LEASE_SECONDS = 120
# Releases one lease may ask for: bounds the search for what fits and any one grant.
MAX_LEASE_RELEASES = 1_000_000
# Open leases one pod (consumer) may hold on a budget: one, plus one while it changes over.
# More would let a pod collect slice after slice of the tail (each ÷ 2 x holders).
MAX_LEASES_PER_HOLDER = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """What a budget allows, in its accountant's units."""

    accountant: accounting.Accountant
    total: accounting.Cost
    delta: decimal.Decimal
    teams: Mapping[str, accounting.Cost]
    team_deltas: Mapping[str, decimal.Decimal]
    team_epsilons: Mapping[str, decimal.Decimal]
    enforcement: Literal["block", "warn"] = "block"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChargeRequest:
    request_id: str
    consumer: wire.Consumer
    release: accounting.Release
    # The policy hash the pod was built from (already checked against the policy's current
    # one by the accountant); recorded in the entry, None for callers that do not send it.
    policy_hash: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeaseRequest:
    """Grant a lease sized for ``releases`` releases of ``route`` (the pod's recent rate)."""

    lease_id: str
    consumer: wire.Consumer
    route: str
    release: accounting.Release  # one release of ``route``, priced from the policy
    releases: int
    seconds: int = LEASE_SECONDS
    policy_hash: str | None = None  # recorded in the grant's entry (see ChargeRequest)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportedRelease:
    """One release made under a lease; ``release`` is its route's price, from the policy."""

    request_id: str
    route: str
    time: str
    release: accounting.Release


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeaseReport:
    """Releases made under a lease since the last report (batch ``batch``, counting from 1);
    ``renew`` asks for that many more releases of the lease's route and a new expiry."""

    lease_id: str
    consumer: wire.Consumer
    batch: int
    releases: tuple[ReportedRelease, ...] = ()
    renew: int | None = None
    # One release of each route of the pod's policy, priced from the policy now: the
    # lease's own route is renewed (and its releases left counted) at this price.
    prices: Mapping[str, accounting.Release] = dataclasses.field(default_factory=dict)
    seconds: int = LEASE_SECONDS
    policy_hash: str | None = None  # recorded in its report and top-up entries


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """The answer to one operation; ``ok`` is what the caller may act on.

    Lease operations also return the lease as it now stands (``lease``; None once settled
    or written off), what this operation added to it (``added``), what settling returned
    (``returned``) and how many more releases of its route it holds (``releases_left``).
    """

    code: OutcomeCode
    ok: bool
    message: str
    sequence: int | None = None
    over_budget: bool = False
    team_epsilon_remaining: decimal.Decimal | None = None
    lease: wire.Lease | None = None
    added: tuple[int, ...] = ()
    returned: tuple[int, ...] = ()
    releases_left: int = 0


class _Seen(NamedTuple):
    """What the request window keeps of one request id."""

    state: wire.RequestState
    sequence: int


@functools.lru_cache(maxsize=8)
def _format_time(now: datetime.datetime) -> str:
    # Cached: every operation of a group commit shares one ``now``.
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.lru_cache(maxsize=1024)
def _release_texts(release: accounting.Release) -> tuple[str, str, str, str]:
    """The entry's noise scale, sensitivity, epsilon and delta (a policy's routes repeat)."""
    return (
        amounts.display(release.scale),
        amounts.display(release.sensitivity),
        amounts.display(release.epsilon),
        amounts.display(release.delta),
    )


class Book:
    """A mutable working copy of one ledger; ``snapshot()`` gives the wire form."""

    def __init__(self, ledger: wire.Ledger, limits: Limits) -> None:
        self._limits = limits
        self._accountant = limits.accountant
        self._sequence = ledger.sequence
        self._head_hash = ledger.head_hash
        self._spent = self._accountant.from_json(list(ledger.spent))
        self._team_spent = {
            team.team: self._accountant.from_json(list(team.spent)) for team in ledger.teams
        }
        self._reservations = {item.request_id: item for item in ledger.reservations}
        self._recent: collections.OrderedDict[str, _Seen] = collections.OrderedDict(
            (request_id, _Seen(state, sequence))
            for request_id, state, sequence in ledger.request_window()
        )
        self._entries = list(ledger.entries)
        self._checkpoint = ledger.checkpoint
        self._window = ledger.window
        self._lifetime = self._accountant.from_json(list(ledger.lifetime_spent))
        self._leases = {lease.lease_id: lease for lease in ledger.leases}
        self._expiry = {lease.lease_id: _parse_time(lease.expires) for lease in ledger.leases}
        self._leases_written_off = ledger.leases_written_off
        self._written_off = self._accountant.from_json(list(ledger.written_off))

    # -- queries -------------------------------------------------------------------------

    def team_spent(self, team: str) -> accounting.Cost:
        return self._team_spent.get(team, self._accountant.zero())

    def team_epsilon_remaining(self, team: str) -> decimal.Decimal | None:
        quota = self._limits.team_epsilons.get(team)
        if quota is None:
            return None
        spent = self._accountant.epsilon_spent(
            self.team_spent(team), self._limits.team_deltas.get(team, self._limits.delta)
        )
        return max(quota - spent, decimal.Decimal(0))

    # -- operations ----------------------------------------------------------------------

    def charge(self, request: ChargeRequest, now: datetime.datetime) -> Outcome:
        """Charge one release, durably and for good (there is no refund)."""
        team = request.consumer.team
        previous = self._recent.get(request.request_id)
        if previous is not None:
            if previous.state == "released":  # refunded under the old protocol
                return Outcome(
                    code="already-released",
                    ok=False,
                    message=f"Request {request.request_id} was refunded; use a new request id",
                    sequence=previous.sequence,
                )
            if previous.state in ("settled", "written-off"):  # a lease id, never a charge
                return Outcome(
                    code="already-released",
                    ok=False,
                    message=f"Request id {request.request_id} names a lease; use a new one",
                    sequence=previous.sequence,
                )
            return Outcome(
                code="duplicate",
                ok=True,
                message=f"Request {request.request_id} was already {previous.state}",
                sequence=previous.sequence,
                team_epsilon_remaining=self.team_epsilon_remaining(team),
            )
        team_capacity = self._limits.teams.get(team)
        if team_capacity is None:
            return Outcome(
                code="no-quota",
                ok=False,
                message=f"The budget has no quota for team {team}",
            )
        try:
            cost = self._accountant.release_cost(request.release)
        except accounting.UnderNoisedError as error:
            return Outcome(code="under-noised", ok=False, message=str(error))
        accountant = self._accountant
        new_team_spent = accountant.add(self.team_spent(team), cost)
        new_spent = accountant.add(self._spent, cost)
        fits_team = accountant.fits(new_team_spent, team_capacity)
        fits_total = accountant.fits(new_spent, self._limits.total)
        over_budget = not (fits_team and fits_total)
        if over_budget and self._limits.enforcement == "block":
            which = "team " + team + "'s quota" if not fits_team else "the dataset's total"
            return Outcome(
                code="exhausted",
                ok=False,
                message=f"Budget exhausted: this release does not fit {which}",
                team_epsilon_remaining=self.team_epsilon_remaining(team),
            )
        noise_scale, sensitivity, epsilon, delta = _release_texts(request.release)
        entry = self._append(
            now=now,
            action="charge",
            request_id=request.request_id,
            consumer=request.consumer,
            cost=accountant.to_json(cost),
            mechanism=request.release.mechanism,
            noise_scale=noise_scale,
            sensitivity=sensitivity,
            epsilon=epsilon,
            delta=delta,
            policy_hash=request.policy_hash,
        )
        self._spent = new_spent
        self._team_spent[team] = new_team_spent
        self._lifetime = accountant.add(self._lifetime, cost)
        self._remember(request.request_id, "committed", entry)
        return Outcome(
            code="granted",
            ok=True,
            message="Over budget (enforcement: warn)" if over_budget else "Granted",
            sequence=entry.sequence,
            over_budget=over_budget,
            team_epsilon_remaining=self.team_epsilon_remaining(team),
        )

    @property
    def mode(self) -> accounting.Mode:
        """The budget's accounting mode (what the costs are in)."""
        return self._accountant.mode

    @property
    def window(self) -> int:
        return self._window

    @property
    def lifetime_spent(self) -> accounting.Cost:
        return self._lifetime

    def renew(self, window: int, now: datetime.datetime) -> None:
        """Start renewal window ``window``: each team's spending so far is refunded by a
        ``renew`` entry, except open reservations (left by the old reserve/commit protocol;
        nothing closes them any more) and open leases, which carry over and keep counting (a
        lease settled later returns its unspent units to the new window). Lifetime totals
        keep everything."""
        if window <= self._window:
            return
        open_by_team: dict[str, accounting.Cost] = {}
        carried = [(item.consumer.team, item.cost) for item in self._reservations.values()]
        carried += [(lease.consumer.team, lease.granted) for lease in self._leases.values()]
        for team, units in carried:
            open_by_team[team] = self._accountant.add(
                open_by_team.get(team, self._accountant.zero()),
                self._accountant.from_json(list(units)),
            )
        for team, spent in sorted(self._team_spent.items()):
            refund = self._subtract(spent, open_by_team.get(team, self._accountant.zero()))
            if not any(self._accountant.to_json(refund)):
                continue
            self._append(
                now=now,
                action="renew",
                request_id=f"renew-{window}-{team}",
                consumer=wire.Consumer(namespace="", policy="", team=team),
                cost=self._accountant.to_json(refund),
            )
            self._team_spent[team] = self._subtract(spent, refund)
            self._spent = self._subtract(self._spent, refund)
        self._window = window

    # -- leases --------------------------------------------------------------------------

    @property
    def leases(self) -> Mapping[str, wire.Lease]:
        """The open leases by id."""
        return self._leases

    def next_expiry(self) -> datetime.datetime | None:
        """When the first open lease expires (the writer sweeps then), None without leases."""
        return min(self._expiry.values(), default=None)

    def grant_lease(self, request: LeaseRequest, now: datetime.datetime) -> Outcome:
        """Grant a lease, recorded as spent in full before anything may be released under it.

        A retried grant (same lease id, same consumer) returns the lease as it stands: a
        lease is never granted twice.
        """
        lease_id, consumer = request.lease_id, request.consumer
        existing = self._leases.get(lease_id)
        if existing is not None:
            if existing.consumer != consumer:
                return _not_yours(lease_id)
            return self._lease_outcome(
                "duplicate",
                existing,
                self._cost_or_none(request.release),
                message=f"Lease {lease_id} was already granted",
            )
        previous = self._recent.get(lease_id)
        if previous is not None:
            return Outcome(
                code="already-released",
                ok=False,
                message=f"Lease id {lease_id} was already used ({previous.state}); use a new one",
                sequence=previous.sequence,
            )
        team = consumer.team
        if team not in self._limits.teams:
            return Outcome(
                code="no-quota", ok=False, message=f"The budget has no quota for team {team}"
            )
        held = sum(1 for lease in self._leases.values() if lease.consumer == consumer)
        if len(self._leases) >= wire.MAX_LEASES or held >= MAX_LEASES_PER_HOLDER:
            return Outcome(
                code="too-many-leases",
                ok=False,
                message=f"Too many open leases ({len(self._leases)} on the budget, {held} held "
                f"by pod {consumer.pod}): settle one before asking for another",
            )
        try:
            cost = self._accountant.release_cost(request.release)
        except accounting.UnderNoisedError as error:
            return Outcome(code="under-noised", ok=False, message=str(error))
        size, over_budget, which = self._lease_size(team, cost, request.releases, new=True)
        if size == 0:
            return Outcome(
                code="exhausted",
                ok=False,
                message=f"Budget exhausted: not one release of {request.route} fits {which}",
                team_epsilon_remaining=self.team_epsilon_remaining(team),
            )
        units = _times(cost, size)
        entry = self._append_release(
            now=now,
            action="lease",
            request_id=lease_id,
            consumer=consumer,
            cost=self._accountant.to_json(units),
            release=request.release,
            policy_hash=request.policy_hash,
        )
        self._spend(team, units)
        expires = now + datetime.timedelta(seconds=_lease_seconds(request.seconds))
        lease = wire.Lease(
            lease_id=lease_id,
            consumer=consumer,
            route=request.route,
            granted=self._accountant.to_json(units),
            used=self._accountant.to_json(self._accountant.zero()),
            expires=_format_time(expires),
            sequence=entry.sequence,
        )
        self._leases[lease_id] = lease
        self._expiry[lease_id] = _parse_time(lease.expires)
        return self._lease_outcome(
            "leased",
            lease,
            cost,
            message=f"Leased {size} release(s) of {request.route}"
            + (" (over budget, enforcement: warn)" if over_budget else ""),
            added=units,
            over_budget=over_budget,
            sequence=entry.sequence,
        )

    def report_lease(
        self, report: LeaseReport, now: datetime.datetime, *, settle: bool = False
    ) -> Outcome:
        """Record the releases made under a lease, then renew it (``report.renew``) or, with
        ``settle``, close it and return its unspent units to the budget.

        The releases' costs are their routes' prices; a report that would use more than the
        lease was granted is refused whole (nothing is recorded). Batches count from 1; a
        retried batch is answered from the lease and never counted twice.
        """
        lease_id = report.lease_id
        lease = self._leases.get(lease_id)
        if lease is None:
            return self._closed_lease(lease_id, settle=settle)
        if lease.consumer != report.consumer:
            return _not_yours(lease_id)
        priced = self._route_price(report, lease)
        price = priced[1] if priced is not None else None
        if report.batch == lease.reports and not settle:
            return self._lease_outcome(
                "duplicate", lease, price, message=f"Report {report.batch} was already recorded"
            )
        if report.batch != lease.reports + 1:
            return Outcome(
                code="out-of-order",
                ok=False,
                message=f"Lease {lease_id} expects report {lease.reports + 1}, not {report.batch}",
            )
        accountant = self._accountant
        used = accountant.from_json(list(lease.used))
        # One entry per route (and price) of the batch; its cost is one release's times
        # the count, exactly what adding them one by one gives in integer units.
        grouped: dict[tuple[str, accounting.Release], list[ReportedRelease]] = {}
        for item in report.releases:
            grouped.setdefault((item.route, item.release), []).append(item)
        groups: list[tuple[accounting.Release, accounting.Cost, list[ReportedRelease]]] = []
        for (_, release), items in grouped.items():
            try:
                total = _times(accountant.release_cost(release), len(items))
            except accounting.UnderNoisedError as error:
                return Outcome(code="under-noised", ok=False, message=str(error))
            used = accountant.add(used, total)
            groups.append((release, total, items))
        granted = accountant.from_json(list(lease.granted))
        if any(u > g for u, g in zip(used.units, granted.units, strict=True)):
            return Outcome(
                code="beyond-lease",
                ok=False,
                message=f"Report {report.batch} uses more than lease {lease_id} was granted: "
                "refused, nothing recorded",
            )
        sequence: int | None = None
        for release, total, items in groups:
            sequence = self._append_release(
                now=now,
                action="report",
                request_id=f"{lease_id}:{report.batch}",
                consumer=lease.consumer,
                cost=accountant.to_json(total),
                release=release,
                releases=len(items),
                requests=_requests_digest(items),
                policy_hash=report.policy_hash,
            ).sequence
        lease = lease.model_copy(
            update={
                "used": accountant.to_json(used),
                "releases": lease.releases + len(report.releases),
                "reports": report.batch,
            }
        )
        self._leases[lease_id] = lease
        if settle:
            return self._settle(lease, now)
        added = accountant.zero()
        over_budget = False
        message = f"Recorded {len(report.releases)} release(s)"
        if report.renew is not None:
            if priced is None:
                message += f"; not renewed: route {lease.route} cannot be priced any more"
            else:
                release, price = priced
                size, over_budget, which = self._lease_size(
                    lease.consumer.team, price, report.renew, new=False
                )
                if size:
                    added = _times(price, size)
                    units = accountant.to_json(added)
                    entry = self._append_release(
                        now=now,
                        action="lease",
                        request_id=f"{lease_id}:{report.batch}",
                        consumer=lease.consumer,
                        cost=units,
                        release=release,
                        policy_hash=report.policy_hash,
                    )
                    sequence = entry.sequence
                    self._spend(lease.consumer.team, added)
                    message += f"; renewed with {size} more release(s)"
                else:
                    message += f"; renewed without more: not one release fits {which}"
                expires = now + datetime.timedelta(seconds=_lease_seconds(report.seconds))
                lease = lease.model_copy(
                    update={
                        "granted": chain.add_units(lease.granted, accountant.to_json(added)),
                        "expires": _format_time(expires),
                    }
                )
                self._leases[lease_id] = lease
                self._expiry[lease_id] = _parse_time(lease.expires)
        return self._lease_outcome(
            "reported",
            lease,
            price,
            message=message,
            added=added,
            over_budget=over_budget,
            sequence=sequence,
        )

    def expire_leases(self, now: datetime.datetime) -> list[wire.Lease]:
        """Write off every open lease past its expiry: its unused units stay spent (sound:
        the sidecar may have released them before it went away), and the write-off is
        counted in ``leasesWrittenOff`` and ``writtenOff``."""
        expired = [lease_id for lease_id, expiry in self._expiry.items() if expiry <= now]
        written_off = []
        for lease_id in sorted(expired, key=lambda name: self._leases[name].sequence):
            lease = self._leases.pop(lease_id)
            del self._expiry[lease_id]
            unspent = self._unspent(lease)
            entry = self._append(
                now=now,
                action="write-off",
                request_id=lease_id,
                consumer=lease.consumer,
                cost=self._accountant.to_json(unspent),
            )
            self._leases_written_off += 1
            self._written_off = self._accountant.add(self._written_off, unspent)
            self._remember(lease_id, "written-off", entry)
            written_off.append(lease)
        return written_off

    def _settle(self, lease: wire.Lease, now: datetime.datetime) -> Outcome:
        unspent = self._unspent(lease)
        entry = self._append(
            now=now,
            action="settle",
            request_id=lease.lease_id,
            consumer=lease.consumer,
            cost=self._accountant.to_json(unspent),
        )
        team = lease.consumer.team
        self._spent = self._subtract(self._spent, unspent)
        self._team_spent[team] = self._subtract(self.team_spent(team), unspent)
        self._lifetime = self._subtract(self._lifetime, unspent)
        del self._leases[lease.lease_id]
        del self._expiry[lease.lease_id]
        self._remember(lease.lease_id, "settled", entry)
        return Outcome(
            code="settled",
            ok=True,
            message=f"Settled lease {lease.lease_id}: {lease.releases} release(s) used it",
            sequence=entry.sequence,
            returned=unspent.units,
            team_epsilon_remaining=self.team_epsilon_remaining(team),
        )

    def _closed_lease(self, lease_id: str, *, settle: bool) -> Outcome:
        previous = self._recent.get(lease_id)
        if previous is not None and previous.state == "written-off":
            return Outcome(
                code="expired",
                ok=False,
                message=f"Lease {lease_id} expired and was written off (its units stay spent)",
                sequence=previous.sequence,
            )
        if previous is not None and previous.state == "settled":
            return Outcome(
                code="duplicate" if settle else "expired",
                ok=settle,
                message=f"Lease {lease_id} was already settled",
                sequence=previous.sequence,
            )
        return Outcome(code="unknown-lease", ok=False, message=f"No open lease {lease_id}")

    def _route_price(
        self, report: LeaseReport, lease: wire.Lease
    ) -> tuple[accounting.Release, accounting.Cost] | None:
        """One release of the lease's route and its cost at the policy's current price;
        None when the policy no longer prices that route."""
        release = report.prices.get(lease.route)
        cost = self._cost_or_none(release)
        return (release, cost) if release is not None and cost is not None else None

    def _cost_or_none(self, release: accounting.Release | None) -> accounting.Cost | None:
        if release is None:
            return None
        try:
            return self._accountant.release_cost(release)
        except accounting.UnderNoisedError:
            return None

    def _lease_size(
        self, team: str, cost: accounting.Cost, requested: int, *, new: bool
    ) -> tuple[int, bool, str]:
        """How many releases of ``cost`` to lease: (size, over budget, what binds if 0).

        At most what was asked for, at most remaining ÷ (2 x active holders) of the team's
        quota and of the dataset's total, and at least one release while one fits.
        """
        requested = min(max(requested, 1), MAX_LEASE_RELEASES)
        extra = 1 if new else 0
        team_holders = extra + sum(
            1 for lease in self._leases.values() if lease.consumer.team == team
        )
        all_holders = extra + len(self._leases)
        fit_team = self._fitting(
            self.team_spent(team), self._limits.teams[team], cost, requested * 2 * team_holders
        )
        fit_total = self._fitting(
            self._spent, self._limits.total, cost, requested * 2 * all_holders
        )
        if self._limits.enforcement == "warn":
            return requested, fit_team < requested or fit_total < requested, ""
        if fit_team == 0:
            return 0, False, f"team {team}'s quota"
        if fit_total == 0:
            return 0, False, "the dataset's total"
        size = min(
            requested,
            max(1, fit_team // (2 * team_holders)),
            max(1, fit_total // (2 * all_holders)),
        )
        return size, False, ""

    def _fitting(
        self, spent: accounting.Cost, capacity: accounting.Cost, cost: accounting.Cost, limit: int
    ) -> int:
        """The most releases of ``cost`` (at most ``limit``) that fit on top of ``spent``."""
        accountant = self._accountant

        def fits(count: int) -> bool:
            return accountant.fits(accountant.add(spent, _times(cost, count)), capacity)

        if not fits(0):
            return 0
        if not any(cost.units):
            return limit
        # Exponential search for a bracket, then bisection: fitting is monotone in the count
        # (rdp's "fits at some order" too: each order stops fitting once and for all).
        low, high = 0, 1
        while high <= limit and fits(high):
            low, high = high, high * 2
        high = min(high, limit + 1)
        while high - low > 1:
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        return low

    def _spend(self, team: str, units: accounting.Cost) -> None:
        self._spent = self._accountant.add(self._spent, units)
        self._team_spent[team] = self._accountant.add(self.team_spent(team), units)
        self._lifetime = self._accountant.add(self._lifetime, units)

    def _unspent(self, lease: wire.Lease) -> accounting.Cost:
        return self._subtract(
            self._accountant.from_json(list(lease.granted)),
            self._accountant.from_json(list(lease.used)),
        )

    def _lease_outcome(
        self,
        code: OutcomeCode,
        lease: wire.Lease,
        cost: accounting.Cost | None,
        *,
        message: str,
        added: accounting.Cost | None = None,
        over_budget: bool = False,
        sequence: int | None = None,
    ) -> Outcome:
        left = self._unspent(lease).units
        releases_left = 0
        if cost is not None and any(cost.units):
            releases_left = min(
                left_units // unit
                for left_units, unit in zip(left, cost.units, strict=True)
                if unit
            )
        return Outcome(
            code=code,
            ok=True,
            message=message,
            sequence=sequence if sequence is not None else lease.sequence,
            over_budget=over_budget,
            team_epsilon_remaining=self.team_epsilon_remaining(lease.consumer.team),
            lease=lease,
            added=added.units if added is not None and any(added.units) else (),
            releases_left=max(releases_left, 0),
        )

    def _append_release(
        self,
        *,
        now: datetime.datetime,
        action: wire.Action,
        request_id: str,
        consumer: wire.Consumer,
        cost: list[int],
        release: accounting.Release,
        releases: int | None = None,
        requests: str | None = None,
        policy_hash: str | None = None,
    ) -> wire.Entry:
        noise_scale, sensitivity, epsilon, delta = _release_texts(release)
        return self._append(
            now=now,
            action=action,
            request_id=request_id,
            consumer=consumer,
            cost=cost,
            mechanism=release.mechanism,
            noise_scale=noise_scale,
            sensitivity=sensitivity,
            epsilon=epsilon,
            delta=delta,
            releases=releases,
            requests=requests,
            policy_hash=policy_hash,
        )

    def snapshot(self) -> wire.Ledger:
        """The ledger to write back, compacted so that status stays bounded."""
        if len(self._entries) > wire.MAX_ENTRIES - COMPACTION_SLACK:
            self._compact()
        accountant = self._accountant
        return wire.Ledger(
            accounting=accountant.mode,
            window=self._window,
            lifetime_spent=accountant.to_json(self._lifetime),
            sequence=self._sequence,
            head_hash=self._head_hash,
            spent=accountant.to_json(self._spent),
            epsilon_spent=float(
                amounts.quantise(
                    accountant.epsilon_spent(self._spent, self._limits.delta),
                    -9,
                    amounts.Rounding.CHARGE,
                )
            ),
            teams=[
                wire.TeamSpent(team=team, spent=accountant.to_json(cost))
                for team, cost in sorted(self._team_spent.items())
            ],
            reservations=sorted(self._reservations.values(), key=lambda item: item.sequence),
            recent=[],
            recent_requests=[
                wire.encode_recent(request_id, seen.state, seen.sequence)
                for request_id, seen in self._recent.items()
            ],
            leases=sorted(self._leases.values(), key=lambda lease: lease.sequence),
            leases_written_off=self._leases_written_off,
            written_off=accountant.to_json(self._written_off) if self._leases_written_off else [],
            entries=list(self._entries),
            checkpoint=self._checkpoint,
        )

    # -- internals -----------------------------------------------------------------------

    def _subtract(self, left: accounting.Cost, right: accounting.Cost) -> accounting.Cost:
        negated = [-unit for unit in self._accountant.to_json(right)]
        return self._accountant.from_json(chain.add_units(self._accountant.to_json(left), negated))

    def _append(
        self,
        *,
        now: datetime.datetime,
        action: wire.Action,
        request_id: str,
        consumer: wire.Consumer,
        cost: list[int],
        mechanism: str = "",
        noise_scale: str = "",
        sensitivity: str = "",
        epsilon: str = "",
        delta: str = "",
        releases: int | None = None,
        requests: str | None = None,
        policy_hash: str | None = None,
    ) -> wire.Entry:
        # The hot path of every charge: hash the wire content directly and build the model
        # once, without re-validating what this function itself produced.
        sequence = self._sequence + 1
        time = _format_time(now)
        content: dict[str, object] = {
            "sequence": sequence,
            "time": time,
            "action": action,
            "requestId": request_id,
            "consumer": {
                "namespace": consumer.namespace,
                "pod": consumer.pod,
                "policy": consumer.policy,
                "team": consumer.team,
            },
            "mechanism": mechanism,
            "noiseScale": noise_scale,
            "sensitivity": sensitivity,
            "epsilon": epsilon,
            "delta": delta,
            "cost": cost,
            "previousHash": self._head_hash,
        }
        if releases is not None:  # hashed only when set (hush.ledger.chain.entry_hash)
            content["releases"] = releases
        if requests is not None:
            content["requests"] = requests
        if policy_hash is not None:
            content["policyHash"] = policy_hash
        entry = wire.Entry.model_construct(
            sequence=sequence,
            time=time,
            action=action,
            request_id=request_id,
            consumer=consumer,
            mechanism=mechanism,
            noise_scale=noise_scale,
            sensitivity=sensitivity,
            epsilon=epsilon,
            delta=delta,
            cost=cost,
            releases=releases,
            requests=requests,
            policy_hash=policy_hash,
            previous_hash=self._head_hash,
            hash=chain.entry_content_hash(self._head_hash, content),
        )
        self._entries.append(entry)
        self._sequence = entry.sequence
        self._head_hash = entry.hash
        return entry

    def _remember(self, request_id: str, state: wire.RequestState, entry: wire.Entry) -> None:
        self._recent[request_id] = _Seen(state, entry.sequence)
        self._recent.move_to_end(request_id)
        while len(self._recent) > wire.MAX_RECENT_REQUESTS:
            self._recent.popitem(last=False)

    def _compact(self) -> None:
        folded, self._entries = self._entries[:-KEEP_ENTRIES], self._entries[-KEEP_ENTRIES:]
        previous = self._checkpoint
        totals: dict[tuple[str, str, str], tuple[int, list[int]]] = {}
        if previous is not None:
            for item in previous.consumers:
                totals[(item.namespace, item.policy, item.team)] = (item.count, list(item.cost))
        spent = list(previous.spent) if previous is not None else []
        for entry in folded:
            key = (entry.consumer.namespace, entry.consumer.policy, entry.consumer.team)
            count, cost = totals.get(key, (0, []))
            signed = chain.signed_cost(entry)
            totals[key] = (count + 1, chain.add_units(cost, signed))
            spent = chain.add_units(spent, signed)
        if len(totals) > wire.MAX_CONSUMER_TOTALS:
            totals = _merge_by_team(totals)
        unsigned = wire.Checkpoint(
            first_sequence=1,
            last_sequence=folded[-1].sequence,
            count=(previous.count if previous is not None else 0) + len(folded),
            head_hash=folded[-1].hash,
            spent=spent,
            consumers=[
                wire.ConsumerTotal(
                    namespace=namespace, policy=policy, team=team, count=count, cost=cost
                )
                for (namespace, policy, team), (count, cost) in sorted(totals.items())
            ],
            hash=chain.GENESIS_HASH,
        )
        self._checkpoint = unsigned.model_copy(update={"hash": chain.checkpoint_hash(unsigned)})


def _times(cost: accounting.Cost, count: int) -> accounting.Cost:
    return accounting.Cost(tuple(unit * count for unit in cost.units))


def _lease_seconds(seconds: int) -> int:
    return min(max(seconds, MIN_LEASE_SECONDS), MAX_LEASE_SECONDS)


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _requests_digest(items: list[ReportedRelease]) -> str:
    """SHA-256 of the releases' '<requestId> <time>' lines: an external log holding the
    request ids can check them against the entry; status holds only the digest."""
    text = "\n".join(f"{item.request_id} {item.time}" for item in items)
    return hashlib.sha256(text.encode()).hexdigest()


def _not_yours(lease_id: str) -> Outcome:
    return Outcome(
        code="not-your-lease", ok=False, message=f"Lease {lease_id} belongs to another pod"
    )


def _merge_by_team(
    totals: dict[tuple[str, str, str], tuple[int, list[int]]],
) -> dict[tuple[str, str, str], tuple[int, list[int]]]:
    """Too many consumers to list: keep per-team totals (what verification needs)."""
    merged: dict[tuple[str, str, str], tuple[int, list[int]]] = {}
    for (_, _, team), (count, cost) in totals.items():
        key = ("*", "*", team)
        previous_count, previous_cost = merged.get(key, (0, []))
        merged[key] = (previous_count + count, chain.add_units(previous_cost, cost))
    return merged
