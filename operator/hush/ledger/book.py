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
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import functools
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
]


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """The answer to one operation; ``ok`` is what the caller may act on."""

    code: OutcomeCode
    ok: bool
    message: str
    sequence: int | None = None
    over_budget: bool = False
    team_epsilon_remaining: decimal.Decimal | None = None


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
        nothing closes them any more), which carry over and keep counting. Lifetime totals
        keep everything."""
        if window <= self._window:
            return
        open_by_team: dict[str, accounting.Cost] = {}
        for reservation in self._reservations.values():
            team = reservation.consumer.team
            open_by_team[team] = self._accountant.add(
                open_by_team.get(team, self._accountant.zero()),
                self._accountant.from_json(list(reservation.cost)),
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
