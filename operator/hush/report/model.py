"""The compliance report's content, computed from objects only (``build``).

Inputs are what ``kubectl get -o json`` shows: the PrivacyBudget (its spec, and its status with
the hash-chained ledger), the DPPolicies of its namespace (those whose ``budgetRef`` names it
charge it) and the core/v1 Events of the namespace. Everything the report says follows from
them and from ``hush.ledger.chain.verify``, so that an auditor can recompute it:

- *verification*: the chain's problems (``chain.verify``), the head hash and the sequence. A
  ledger that fails, or that does not even parse, makes ``verified`` false; the page puts
  that first.
- *entries*: every retained entry as ``hush ledger export`` writes it (sequence, time,
  action, consumer, mechanism, declared epsilon and delta, cost units, hash), the route
  recognised from the charging policy, and the checkpoint's per-consumer totals.
- *spend per team and policy*: the checkpoint's totals plus every retained entry's signed
  cost (``chain.signed_cost``), as the budget's accountant converts units to epsilon, over
  time (the plot's series) and at the end (the table).
- *releases by route and mechanism*: a charge (or a reserved charge committed) is one
  release; a lease's report entry carries how many releases it records.
- *policy-hash history*: each entry records the policy hash its pod was built from
  (``policyHash``, checked against the policy's current hash before the charge) and the
  release it charged (mechanism, scale, sensitivity, epsilon, delta). Per policy, each
  distinct (recorded hash, release) is a period (first and last entry with it); a period is
  current when its hash is the policy's ``status.policyHash``. Entries written before the
  ledger recorded the hash group by release alone ("not recorded"), and such a period is
  current when the current spec still charges its release (the inference used before).
- *alerts*: the budget's alerting conditions (NearExhaustion, Exhausted,
  UnboundedLifetimeLoss) while True, a policy not Ready, and Warning Events about the budget
  or its policies (the operator records NearExhaustion and rollout problems as Events).

Entry kinds this module does not know are still listed, by their action, and counted as
``chain.signed_cost`` counts them.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import pydantic

from hush.api import dppolicy, privacybudget
from hush.api import ledger as wire
from hush.ledger import book, chain, limits
from hush.privacy import accounting, amounts, route_cost

# Budget conditions that are alerts while their status is True.
ALERT_CONDITIONS = ("NearExhaustion", "Exhausted", "UnboundedLifetimeLoss")
# Entry actions that record one release each; "report" entries say how many they record.
_ONE_RELEASE = frozenset({"charge", "commit"})

_GUARANTEE = {
    "pure": (
        "Pure accounting: every release is (epsilon, delta)-differentially private and the "
        "ledger adds the epsilons and the deltas (basic composition). Everything released "
        "from {dataset} is ({epsilon}, {delta})-differentially private as long as the spent "
        "amounts stay within the total."
    ),
    "zcdp": (
        "zCDP accounting: every release is charged its rho (zero-concentrated differential "
        "privacy) and the rhos add. The total epsilon {epsilon} at delta {delta} is the rho "
        "that fits rho + 2 sqrt(rho ln(1/delta)) <= epsilon, so everything released from "
        "{dataset} is ({epsilon}, {delta})-differentially private while spent rho stays "
        "within it."
    ),
    "rdp": (
        "RDP accounting: every release is charged its Renyi divergence at a fixed grid of "
        "orders and each order adds up. A release fits while, at some order, the sum converts "
        "(at delta/46, the filter's share per order) to at most epsilon {epsilon}, so "
        "everything released from {dataset} is ({epsilon}, {delta})-differentially private."
    ),
}


class ReportError(Exception):
    """The budget itself cannot be read (its spec is not valid); the message says why."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EntryRow:
    """One retained ledger entry, with the numbers ``hush ledger export`` prints."""

    sequence: int
    time: str
    action: str
    namespace: str
    policy: str
    team: str
    pod: str
    request_id: str
    mechanism: str
    noise_scale: str
    sensitivity: str
    epsilon: str
    delta: str
    cost: tuple[int, ...]
    releases: int  # releases this entry records (0 for one that records none)
    route: str  # the charging policy's route with this release, "" when none matches
    policy_hash: str  # the policy hash recorded in the entry, "" when not recorded
    hash: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsumerSpend:
    """What one (namespace, policy, team) spent: the checkpoint's part plus retained entries."""

    namespace: str
    policy: str
    team: str
    entries: int  # ledger entries, folded and retained
    cost: tuple[int, ...]
    epsilon: str  # ``cost`` as the accountant converts it (at the team's delta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Series:
    """Cumulative epsilon of one consumer (or the dataset) after each of its entries."""

    label: str
    team: str  # "" for the dataset's line
    policy: str
    points: tuple[tuple[datetime.datetime, float], ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReleaseRow:
    """Releases of one route of one policy with one mechanism, in the retained entries."""

    policy: str
    route: str
    mechanism: str
    epsilon: str  # declared, per release
    releases: int
    cost: tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyPeriod:
    """One (recorded policy hash, charged release) of a policy and the entries that charged
    it: a period during which that version of the policy was in force."""

    policy_hash: str  # the hash the entries recorded, "" for entries that did not record one
    mechanism: str
    noise_scale: str
    sensitivity: str
    epsilon: str
    delta: str
    first_sequence: int
    first_time: str
    last_sequence: int
    last_time: str
    entries: int
    routes: tuple[str, ...]  # routes of the current spec that charge exactly this
    current: bool  # its hash is the policy's current one (unrecorded: the spec charges it)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyHistory:
    namespace: str
    name: str
    team: str
    current_hash: str  # status.policyHash, "" when absent (the policy may be gone)
    exists: bool
    periods: tuple[PolicyPeriod, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Alert:
    source: str  # "condition" or "event"
    subject: str  # "PrivacyBudget census" or "DPPolicy census-stats"
    reason: str
    message: str
    time: str
    count: int = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Verification:
    verified: bool
    problems: tuple[str, ...]
    head_hash: str
    sequence: int
    retained: int
    checkpoint: tuple[int, int] | None  # first and last sequence folded


@dataclasses.dataclass(frozen=True, kw_only=True)
class Amount:
    total: str
    spent: str
    remaining: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeamRow:
    team: str
    epsilon: Amount | None
    delta: Amount | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Report:
    namespace: str
    name: str
    dataset: str
    accounting: str
    guarantee: str
    enforcement: str
    renewal: str
    state: str
    generated: str
    epsilon: Amount | None
    delta: Amount | None
    total_epsilon: str
    total_delta: str
    teams: tuple[TeamRow, ...]
    verification: Verification
    entries: tuple[EntryRow, ...]
    consumers: tuple[ConsumerSpend, ...]
    series: tuple[Series, ...]
    releases: tuple[ReleaseRow, ...]
    policies: tuple[PolicyHistory, ...]
    alerts: tuple[Alert, ...]

    def as_json(self) -> dict[str, Any]:
        """The model as JSON-friendly data (camelCase keys), embedded in the page."""
        data: dict[str, Any] = _camel(dataclasses.asdict(self))
        return data


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(str(key)): _camel(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_camel(item) for item in value]
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def _camel_key(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# -- pieces ------------------------------------------------------------------------------------


def _time(text: str) -> datetime.datetime | None:
    try:
        return privacybudget.parse_timestamp(text)
    except ValueError:
        return None


def _amount(spend: privacybudget.Spend | None) -> Amount | None:
    if spend is None:
        return None
    return Amount(total=spend.total, spent=spend.spent, remaining=spend.remaining)


def _signature(entry: wire.Entry) -> tuple[str, str, str, str, str]:
    return (entry.mechanism, entry.noise_scale, entry.sensitivity, entry.epsilon, entry.delta)


def _route_signatures(
    policy: dppolicy.DPPolicySpec,
) -> dict[tuple[str, str, str, str, str], list[str]]:
    """Each release the policy's routes charge (as an entry records it) and its routes."""
    found: dict[tuple[str, str, str, str, str], list[str]] = {}
    for route in policy.routes:
        try:
            release = route_cost.route_charge(route)
        except (route_cost.RouteError, ValueError, ArithmeticError):
            continue  # a route that cannot be released charges nothing
        key = (
            release.mechanism,
            amounts.display(release.scale),
            amounts.display(release.sensitivity),
            amounts.display(release.epsilon),
            amounts.display(release.delta),
        )
        found.setdefault(key, []).append(route.path)
    return found


def _charging(
    budget_name: str, policies: Iterable[dict[str, Any]]
) -> dict[str, tuple[dict[str, Any], dppolicy.DPPolicySpec | None]]:
    """The policies naming the budget, by name, with their spec (None if it does not parse)."""
    found: dict[str, tuple[dict[str, Any], dppolicy.DPPolicySpec | None]] = {}
    for policy in policies:
        spec_raw = policy.get("spec") or {}
        if (spec_raw.get("budgetRef") or {}).get("name") != budget_name:
            continue
        try:
            spec: dppolicy.DPPolicySpec | None = dppolicy.DPPolicySpec.model_validate(spec_raw)
        except pydantic.ValidationError:
            spec = None
        found[str((policy.get("metadata") or {}).get("name", ""))] = (policy, spec)
    return found


def _releases_of(entry: wire.Entry) -> int:
    if entry.action in _ONE_RELEASE:
        return 1
    if entry.action == "report":
        return entry.releases or 0
    return 0


def _nonnegative(units: Sequence[int]) -> list[int]:
    # A window's renewal or a settled lease can take a consumer's running sum below what
    # one accountant call accepts mid-way; what was spent is never less than nothing.
    return [max(unit, 0) for unit in units]


class _Converter:
    """Units to epsilon with the budget's accountant, at a team's delta (or the dataset's)."""

    def __init__(self, budget_limits: book.Limits) -> None:
        self._limits = budget_limits
        self.accountant: accounting.Accountant = budget_limits.accountant

    def delta(self, team: str | None) -> Decimal:
        if team is not None and team in self._limits.team_deltas:
            delta = self._limits.team_deltas[team]
            if delta > 0 or self.accountant.mode == "pure":
                return delta
        return self._limits.delta

    def epsilon(self, units: Sequence[int], team: str | None) -> Decimal:
        width = len(self.accountant.zero().units)
        padded = (_nonnegative(units) + [0] * width)[:width]
        if not any(padded):
            return Decimal(0)
        return self.accountant.epsilon_spent(self.accountant.from_json(padded), self.delta(team))


def _verification(ledger: wire.Ledger) -> Verification:
    problems = tuple(str(problem) for problem in chain.verify(ledger))
    checkpoint = ledger.checkpoint
    return Verification(
        verified=not problems,
        problems=problems,
        head_hash=ledger.head_hash,
        sequence=ledger.sequence,
        retained=len(ledger.entries),
        checkpoint=None
        if checkpoint is None
        else (checkpoint.first_sequence, checkpoint.last_sequence),
    )


def _alerts(
    name: str,
    status: dict[str, Any],
    charging: dict[str, tuple[dict[str, Any], dppolicy.DPPolicySpec | None]],
    events: Iterable[dict[str, Any]],
) -> list[Alert]:
    alerts: list[Alert] = []
    for condition in status.get("conditions") or []:
        kind = str(condition.get("type", ""))
        state = str(condition.get("status", ""))
        if (kind in ALERT_CONDITIONS and state == "True") or (kind == "Ready" and state == "False"):
            alerts.append(
                Alert(
                    source="condition",
                    subject=f"PrivacyBudget {name}",
                    reason=f"{kind}={state} ({condition.get('reason', '')})",
                    message=str(condition.get("message", "")),
                    time=str(condition.get("lastTransitionTime", "")),
                )
            )
    for policy_name, (policy, _) in sorted(charging.items()):
        for condition in (policy.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "Ready" and condition.get("status") == "False":
                alerts.append(
                    Alert(
                        source="condition",
                        subject=f"DPPolicy {policy_name}",
                        reason=f"Ready=False ({condition.get('reason', '')})",
                        message=str(condition.get("message", "")),
                        time=str(condition.get("lastTransitionTime", "")),
                    )
                )
    subjects = {("PrivacyBudget", name)} | {("DPPolicy", policy) for policy in charging}
    for event in events:
        involved = event.get("involvedObject") or {}
        if (involved.get("kind"), involved.get("name")) not in subjects:
            continue
        if event.get("type") != "Warning":
            continue
        alerts.append(
            Alert(
                source="event",
                subject=f"{involved.get('kind')} {involved.get('name')}",
                reason=str(event.get("reason", "")),
                message=str(event.get("message", "")),
                time=str(
                    event.get("lastTimestamp")
                    or event.get("eventTime")
                    or event.get("firstTimestamp")
                    or (event.get("metadata") or {}).get("creationTimestamp")
                    or ""
                ),
                count=int(event.get("count") or 1),
            )
        )
    return sorted(alerts, key=lambda alert: (alert.time, alert.subject, alert.reason))


# -- the report --------------------------------------------------------------------------------


def build(
    budget: dict[str, Any],
    policies: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    now: datetime.datetime,
) -> Report:
    """The report of ``budget``; ``policies`` and ``events`` may hold others (filtered here)."""
    metadata = budget.get("metadata") or {}
    name = str(metadata.get("name", ""))
    namespace = str(metadata.get("namespace", ""))
    try:
        spec = privacybudget.PrivacyBudgetSpec.model_validate(budget.get("spec") or {})
    except pydantic.ValidationError as error:
        raise ReportError(f"PrivacyBudget {namespace}/{name} has no valid spec: {error}") from error
    status_raw = budget.get("status") or {}
    budget_limits = limits.limits_for(spec)
    converter = _Converter(budget_limits)
    unreadable: str | None = None
    try:
        status = privacybudget.PrivacyBudgetStatus.model_validate(status_raw)
        ledger = status.ledger or wire.Ledger()
    except pydantic.ValidationError as error:
        # A status edited into an invalid shape is tampering too: the page says so, with
        # what parsed of the rest.
        unreadable = f"status.ledger is not a valid ledger: {error.errors()[0]['msg']}"
        status = privacybudget.PrivacyBudgetStatus.model_validate(
            {key: value for key, value in status_raw.items() if key in ("state",)}
        )
        ledger = wire.Ledger()
    verification = _verification(ledger)
    if unreadable is not None:
        verification = dataclasses.replace(
            verification, verified=False, problems=(unreadable, *verification.problems)
        )

    charging = _charging(name, policies)
    signatures = {
        policy_name: _route_signatures(spec_of) if spec_of is not None else {}
        for policy_name, (_, spec_of) in charging.items()
    }

    rows: list[EntryRow] = []
    for entry in ledger.entries:
        matched = signatures.get(entry.consumer.policy, {}).get(_signature(entry), [])
        rows.append(
            EntryRow(
                sequence=entry.sequence,
                time=entry.time,
                action=entry.action,
                namespace=entry.consumer.namespace,
                policy=entry.consumer.policy,
                team=entry.consumer.team,
                pod=entry.consumer.pod,
                request_id=entry.request_id,
                mechanism=entry.mechanism,
                noise_scale=entry.noise_scale,
                sensitivity=entry.sensitivity,
                epsilon=entry.epsilon,
                delta=entry.delta,
                cost=tuple(entry.cost),
                releases=_releases_of(entry),
                route=" | ".join(matched),
                policy_hash=entry.policy_hash or "",
                hash=entry.hash,
            )
        )

    consumers, series = _spend(ledger, converter)
    return Report(
        namespace=namespace,
        name=name,
        dataset=spec.dataset,
        accounting=spec.accounting,
        guarantee=_GUARANTEE[spec.accounting].format(
            dataset=spec.dataset,
            epsilon=amounts.display(amounts.exact(spec.epsilon)),
            delta=amounts.display(amounts.exact(spec.delta)),
        ),
        enforcement=spec.enforcement,
        renewal=spec.renewal.policy,
        state=status.state,
        generated=now.isoformat(timespec="seconds"),
        epsilon=_amount(status.epsilon),
        delta=_amount(status.delta),
        total_epsilon=amounts.display(amounts.exact(spec.epsilon)),
        total_delta=amounts.display(amounts.exact(spec.delta)),
        teams=tuple(
            TeamRow(team=team.team, epsilon=_amount(team.epsilon), delta=_amount(team.delta))
            for team in status.teams
        ),
        verification=verification,
        entries=tuple(rows),
        consumers=consumers,
        series=series,
        releases=_release_rows(rows),
        policies=_histories(namespace, ledger, charging, signatures),
        alerts=tuple(_alerts(name, status_raw, charging, events)),
    )


def _spend(
    ledger: wire.Ledger, converter: _Converter
) -> tuple[tuple[ConsumerSpend, ...], tuple[Series, ...]]:
    """Per consumer: totals at the end, and cumulative epsilon after each entry over time."""
    Key = tuple[str, str, str]  # noqa: N806 - a local type alias
    units: dict[Key, list[int]] = {}
    counts: dict[Key, int] = {}
    checkpoint = ledger.checkpoint
    if checkpoint is not None:
        for consumer in checkpoint.consumers:
            key = (consumer.namespace, consumer.policy, consumer.team)
            units[key] = chain.add_units(units.get(key, []), consumer.cost)
            counts[key] = counts.get(key, 0) + consumer.count
    total = list(checkpoint.spent) if checkpoint is not None else []

    timed = [(moment, entry) for entry in ledger.entries if (moment := _time(entry.time))]
    points: dict[Key, list[tuple[datetime.datetime, float]]] = {}
    dataset_points: list[tuple[datetime.datetime, float]] = []
    if timed:
        # The checkpoint's amounts were spent before the first retained entry: that is where
        # each line starts.
        start = timed[0][0]
        for key, value in units.items():
            points[key] = [(start, float(converter.epsilon(value, key[2])))]
        dataset_points.append((start, float(converter.epsilon(total, None))))

    for entry in ledger.entries:
        moment = _time(entry.time)
        signed = chain.signed_cost(entry)
        total = chain.add_units(total, signed)
        if entry.action == "renew":
            # A team's new window: every consumer of the team starts again from nothing
            # (what was open carries over in the entry's own accounting).
            touched = [key for key in units if key[2] == entry.consumer.team]
            for key in touched:
                units[key] = []
        else:
            key = (entry.consumer.namespace, entry.consumer.policy, entry.consumer.team)
            units[key] = chain.add_units(units.get(key, []), signed)
            counts[key] = counts.get(key, 0) + 1
            touched = [key]
        if moment is None:
            continue
        for key in touched:
            if key not in points:  # a consumer new since the checkpoint starts from nothing
                points[key] = [(timed[0][0], 0.0)]
            points[key].append((moment, float(converter.epsilon(units[key], key[2]))))
        dataset_points.append((moment, float(converter.epsilon(total, None))))

    consumers = tuple(
        ConsumerSpend(
            namespace=key[0],
            policy=key[1],
            team=key[2],
            entries=counts.get(key, 0),
            cost=tuple(units[key]),
            epsilon=amounts.display(converter.epsilon(units[key], key[2])),
        )
        for key in sorted(units)
    )
    series = [
        Series(
            label=f"team {key[2]} / {key[1] or '(window)'}",
            team=key[2],
            policy=key[1],
            points=tuple(points[key]),
        )
        for key in sorted(points)
        if points[key]
    ]
    if dataset_points:
        series.append(
            Series(label="dataset total", team="", policy="", points=tuple(dataset_points))
        )
    return consumers, tuple(series)


def _release_rows(rows: Sequence[EntryRow]) -> tuple[ReleaseRow, ...]:
    grouped: dict[tuple[str, str, str, str], tuple[int, list[int]]] = {}
    for row in rows:
        if row.releases == 0:
            continue
        key = (
            row.policy,
            row.route or "(no current route charges this)",
            row.mechanism,
            row.epsilon,
        )
        count, cost = grouped.get(key, (0, []))
        grouped[key] = (count + row.releases, chain.add_units(cost, row.cost))
    return tuple(
        ReleaseRow(
            policy=key[0],
            route=key[1],
            mechanism=key[2] or "-",
            epsilon=key[3] or "-",
            releases=count,
            cost=tuple(cost),
        )
        for key, (count, cost) in sorted(grouped.items())
    )


def _histories(
    namespace: str,
    ledger: wire.Ledger,
    charging: dict[str, tuple[dict[str, Any], dppolicy.DPPolicySpec | None]],
    signatures: dict[str, dict[tuple[str, str, str, str, str], list[str]]],
) -> tuple[PolicyHistory, ...]:
    # Per policy: (recorded hash or "", release signature) -> its entries, oldest first.
    periods: dict[str, dict[tuple[str, tuple[str, str, str, str, str]], list[wire.Entry]]] = {}
    for entry in ledger.entries:
        if not entry.mechanism or not entry.consumer.policy:
            continue  # renewals, settlements and write-offs charge no release of a route
        key = (entry.policy_hash or "", _signature(entry))
        periods.setdefault(entry.consumer.policy, {}).setdefault(key, []).append(entry)
    histories: list[PolicyHistory] = []
    for policy_name in sorted(set(periods) | set(charging)):
        policy, _ = charging.get(policy_name, ({}, None))
        current = signatures.get(policy_name, {})
        current_hash = str((policy.get("status") or {}).get("policyHash", ""))
        items: list[PolicyPeriod] = []
        for (recorded, signature), entries in periods.get(policy_name, {}).items():
            items.append(
                PolicyPeriod(
                    policy_hash=recorded,
                    mechanism=signature[0],
                    noise_scale=signature[1],
                    sensitivity=signature[2],
                    epsilon=signature[3],
                    delta=signature[4],
                    first_sequence=entries[0].sequence,
                    first_time=entries[0].time,
                    last_sequence=entries[-1].sequence,
                    last_time=entries[-1].time,
                    entries=len(entries),
                    routes=tuple(current.get(signature, [])),
                    # A recorded hash says exactly which spec was in force; an entry from
                    # before hashes were recorded can only be matched by its release.
                    current=recorded == current_hash if recorded else signature in current,
                )
            )
        team = ((policy.get("spec") or {}).get("budgetRef") or {}).get("team", "")
        if not team and policy_name in periods:
            first = next(iter(periods[policy_name].values()))[0]
            team = first.consumer.team
        histories.append(
            PolicyHistory(
                namespace=namespace,
                name=policy_name,
                team=str(team),
                current_hash=current_hash,
                exists=policy_name in charging,
                periods=tuple(sorted(items, key=lambda item: item.first_sequence)),
            )
        )
    return tuple(histories)
