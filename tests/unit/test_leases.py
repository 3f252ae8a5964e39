"""Leases in the ledger (pure ``Book``, no cluster): grant, spend locally, report, renew,
settle, write-off; sizes; the hash chain; and, for any interleaving of many holders, no
overspend and an exact drain (docs/design/0021-leases.md)."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hush.api import ledger as wire
from hush.api import privacybudget
from hush.ledger import book, chain, limits
from hush.privacy import accounting

NOW = datetime.datetime(2026, 12, 8, 0, 0, tzinfo=datetime.UTC)
ROUTE = "/count"


def _release(epsilon: str = "0.1", mechanism: str = "laplace") -> accounting.Release:
    eps = decimal.Decimal(epsilon)
    if mechanism == "gaussian":
        return accounting.Release(
            mechanism="gaussian",
            epsilon=eps,
            delta=decimal.Decimal("1e-6"),
            sensitivity=decimal.Decimal(1),
            scale=decimal.Decimal(20),
        )
    return accounting.Release(
        mechanism="laplace",
        epsilon=eps,
        delta=decimal.Decimal(0),
        sensitivity=decimal.Decimal(1),
        scale=(1 / eps).quantize(decimal.Decimal("1e-9"), rounding=decimal.ROUND_CEILING),
    )


RELEASE = _release()


def _limits(team_epsilon: float = 1.0, total: float = 2.0, **spec: Any) -> book.Limits:
    return limits.limits_for(
        privacybudget.PrivacyBudgetSpec.model_validate(
            {
                "dataset": "d",
                "epsilon": total,
                "quotas": [
                    {"team": "analytics", "epsilon": team_epsilon},
                    {"team": "growth", "epsilon": total - team_epsilon},
                ],
                **spec,
            }
        )
    )


def _consumer(pod: str = "app-1", team: str = "analytics") -> wire.Consumer:
    return wire.Consumer(namespace="ns", pod=pod, policy="stats", team=team)


def _grant(
    working: book.Book,
    lease_id: str,
    releases: int,
    *,
    pod: str = "app-1",
    now: datetime.datetime = NOW,
    seconds: int = 30,
    release: accounting.Release = RELEASE,
    policy_hash: str | None = None,
) -> book.Outcome:
    request = book.LeaseRequest(
        lease_id=lease_id,
        consumer=_consumer(pod),
        route=ROUTE,
        release=release,
        releases=releases,
        seconds=seconds,
        policy_hash=policy_hash,
    )
    return working.grant_lease(request, now)


def _report(
    working: book.Book,
    lease_id: str,
    batch: int,
    count: int,
    *,
    pod: str = "app-1",
    renew: int | None = None,
    settle: bool = False,
    now: datetime.datetime = NOW,
    release: accounting.Release = RELEASE,
    policy_hash: str | None = None,
) -> book.Outcome:
    report = book.LeaseReport(
        lease_id=lease_id,
        consumer=_consumer(pod),
        batch=batch,
        releases=tuple(
            book.ReportedRelease(
                request_id=f"{lease_id}-{batch}-{n}", route=ROUTE, time="t", release=release
            )
            for n in range(count)
        ),
        renew=renew,
        prices={ROUTE: release},
        policy_hash=policy_hash,
    )
    return working.report_lease(report, now, settle=settle)


def _epsilon_units(working: book.Book) -> int:
    return working.snapshot().spent[0]


UNIT = 100_000_000  # epsilon 0.1 in pure units (1e-9)


def test_a_grant_is_spent_in_full_at_once_and_sized_by_request_and_remaining() -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=1.0))  # 10 releases
    outcome = _grant(working, "l1", 3)
    assert (outcome.code, outcome.ok, outcome.releases_left) == ("leased", True, 3)
    assert _epsilon_units(working) == 3 * UNIT  # recorded before any release
    assert outcome.lease is not None
    assert outcome.lease.expires == "2026-12-08T00:00:30.000000Z"
    # Asked for 100 with l1 open: two holders, at most remaining / (2 x 2) = 7 // 4 = 1.
    assert _grant(working, "l2", 100, pod="app-2").releases_left == 1
    ledger = working.snapshot()
    assert [entry.action for entry in ledger.entries] == ["lease", "lease"]
    assert ledger.entries[0].mechanism == "laplace"
    assert ledger.entries[0].epsilon == "0.1"
    assert chain.verify(ledger) == []


def test_sizes_shrink_to_one_release_near_exhaustion_and_the_budget_drains_exactly() -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=1.0))
    sizes = []
    for number in range(20):
        outcome = _grant(working, f"l{number}", 1000, pod=f"pod-{number}")
        if not outcome.ok:
            assert outcome.code == "exhausted"
            assert "team analytics's quota" in outcome.message
            break
        sizes.append(outcome.releases_left)
    # remaining 10 / (2 x 1) = 5; 5 / (2 x 2) = 1; then one at a time until none is left.
    assert sizes == [5, 1, 1, 1, 1, 1]
    assert sum(sizes) == 10
    assert working.team_epsilon_remaining("analytics") == 0


def test_the_dataset_total_caps_a_lease_too() -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=1.0, total=1.2))
    assert _grant(working, "g", 2, pod="growth").ok  # analytics pod, uses the total too
    outcome = _grant(working, "l", 1000, pod="other")
    # total 12 releases, 2 spent: 10 left / (2 x 2 holders) = 2; the team's 8 / 4 = 2.
    assert outcome.releases_left == 2


def test_reports_are_priced_from_the_policy_and_refused_beyond_the_lease() -> None:
    working = book.Book(wire.Ledger(), _limits())
    _grant(working, "l1", 4)
    beyond = _report(working, "l1", 1, 5)
    assert (beyond.code, beyond.ok) == ("beyond-lease", False)
    assert [entry.action for entry in working.snapshot().entries] == ["lease"]  # nothing
    within = _report(working, "l1", 1, 3)
    assert (within.code, within.releases_left) == ("reported", 1)
    assert within.lease is not None
    assert within.lease.used == [3 * UNIT, 0]
    entry = working.snapshot().entries[-1]
    assert (entry.action, entry.request_id, entry.releases) == ("report", "l1:1", 3)
    assert entry.cost == [3 * UNIT, 0]
    assert entry.requests is not None
    assert _epsilon_units(working) == 4 * UNIT  # a report adds nothing: the lease counted it
    # A retried batch is recognised; a skipped one is out of order.
    assert _report(working, "l1", 1, 3).code == "duplicate"
    assert _report(working, "l1", 3, 1).code == "out-of-order"
    assert working.leases["l1"].used == [3 * UNIT, 0]
    assert chain.verify(working.snapshot()) == []


def test_settle_returns_exactly_the_unspent_units() -> None:
    working = book.Book(wire.Ledger(), _limits())
    _grant(working, "l1", 4)
    _report(working, "l1", 1, 1)
    settled = _report(working, "l1", 2, 1, settle=True)
    assert (settled.code, settled.returned) == ("settled", (2 * UNIT, 0))
    assert _epsilon_units(working) == 2 * UNIT
    assert working.leases == {}
    ledger = working.snapshot()
    assert [entry.action for entry in ledger.entries] == ["lease", "report", "report", "settle"]
    assert ledger.teams[0].spent == [2 * UNIT, 0]
    # A retried settlement is answered from the ledger; the id cannot lease again.
    assert _report(working, "l1", 2, 1, settle=True).code == "duplicate"
    assert _grant(working, "l1", 1).code == "already-released"
    assert chain.verify(ledger) == []


def test_a_lease_is_never_granted_twice_nor_used_by_another_pod() -> None:
    working = book.Book(wire.Ledger(), _limits())
    first = _grant(working, "l1", 2)
    again = _grant(working, "l1", 2)
    assert (again.code, again.sequence) == ("duplicate", first.sequence)
    assert _epsilon_units(working) == 2 * UNIT
    assert _grant(working, "l1", 2, pod="thief").code == "not-your-lease"
    assert _report(working, "l1", 1, 1, pod="thief").code == "not-your-lease"
    assert _report(working, "nope", 1, 1).code == "unknown-lease"


def test_a_pod_holds_at_most_two_leases() -> None:
    working = book.Book(wire.Ledger(), _limits())
    assert _grant(working, "a", 1).ok
    assert _grant(working, "b", 1).ok
    assert _grant(working, "c", 1).code == "too-many-leases"


def test_an_expired_lease_is_written_off_as_fully_spent() -> None:
    working = book.Book(wire.Ledger(), _limits())
    _grant(working, "l1", 4, seconds=10)
    _report(working, "l1", 1, 1)
    assert working.next_expiry() == NOW + datetime.timedelta(seconds=10)
    assert working.expire_leases(NOW + datetime.timedelta(seconds=9)) == []
    written_off = working.expire_leases(NOW + datetime.timedelta(seconds=10))
    assert [lease.lease_id for lease in written_off] == ["l1"]
    ledger = working.snapshot()
    assert _epsilon_units(working) == 4 * UNIT  # the unused three stay spent
    assert (ledger.leases_written_off, ledger.written_off) == (1, [3 * UNIT, 0])
    assert ledger.entries[-1].action == "write-off"
    assert ledger.entries[-1].cost == [3 * UNIT, 0]
    late = _report(working, "l1", 2, 1, now=NOW + datetime.timedelta(seconds=11))
    assert (late.code, late.ok) == ("expired", False)
    assert working.next_expiry() is None
    assert chain.verify(ledger) == []


def test_renewal_tops_up_and_extends_the_lease() -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=1.0))
    _grant(working, "l1", 2, seconds=10)
    later = NOW + datetime.timedelta(seconds=5)
    renewed = _report(working, "l1", 1, 2, renew=2, now=later)
    assert (renewed.code, renewed.releases_left, renewed.added) == ("reported", 2, (2 * UNIT, 0))
    assert renewed.lease is not None
    assert renewed.lease.expires == "2026-12-08T00:00:35.000000Z"  # 30 s from the renewal
    assert _epsilon_units(working) == 4 * UNIT
    actions = [(entry.action, entry.request_id) for entry in working.snapshot().entries]
    assert actions == [("lease", "l1"), ("report", "l1:1"), ("lease", "l1:1")]
    # Near exhaustion a renewal adds what fits and no more; at the end, nothing.
    for batch in range(2, 12):
        outcome = _report(working, "l1", batch, renewed.releases_left, renew=100, now=later)
        renewed = outcome
    assert renewed.releases_left == 0
    assert renewed.added == ()
    assert "not one release fits team analytics's quota" in renewed.message
    assert working.team_epsilon_remaining("analytics") == 0


def test_a_window_renewal_keeps_open_leases_counted() -> None:
    working = book.Book(wire.Ledger(), _limits())
    _grant(working, "l1", 4)
    working.charge(
        book.ChargeRequest(request_id="c1", consumer=_consumer("app-2"), release=RELEASE), NOW
    )
    working.renew(1, NOW)
    assert working.team_spent("analytics").units == (4 * UNIT, 0)  # the charge was refunded
    _report(working, "l1", 1, 1, settle=True)
    assert working.team_spent("analytics").units == (1 * UNIT, 0)
    assert chain.verify(working.snapshot()) == []


def test_old_entries_hash_as_before_and_compaction_folds_lease_entries() -> None:
    # An entry written before leases existed (no releases/requests) keeps its hash.
    legacy = book.Book(wire.Ledger(), _limits())
    legacy.charge(book.ChargeRequest(request_id="c1", consumer=_consumer(), release=RELEASE), NOW)
    entry = legacy.snapshot().entries[0]
    assert "releases" not in entry.model_dump(by_alias=True, exclude_none=True)
    assert chain.entry_hash(entry) == entry.hash
    budget = _limits(team_epsilon=15.0, total=20.0)
    working = book.Book(wire.Ledger(), budget)
    for number in range(40):
        assert _grant(working, f"l{number}", 3).releases_left == 3
        assert _report(working, f"l{number}", 1, 2).ok
        working = book.Book(working.snapshot(), budget)  # written and read back
        assert _report(working, f"l{number}", 2, 1, settle=True).returned == (0, 0)
    ledger = working.snapshot()
    assert len(ledger.entries) <= wire.MAX_ENTRIES
    assert ledger.checkpoint is not None
    assert chain.verify(ledger) == []
    assert ledger.spent[0] == 120 * UNIT
    assert ledger.leases == []


def test_grant_report_and_top_up_entries_record_the_policy_hash() -> None:
    working = book.Book(wire.Ledger(), _limits())
    _grant(working, "l1", 2, policy_hash="sha256:" + "1" * 64)
    _report(working, "l1", 1, 2, renew=2, policy_hash="sha256:" + "2" * 64)
    _report(working, "l1", 2, 1, settle=True)  # a report without one records none
    ledger = working.snapshot()
    recorded = [(entry.action, entry.policy_hash) for entry in ledger.entries]
    assert recorded == [
        ("lease", "sha256:" + "1" * 64),
        ("report", "sha256:" + "2" * 64),
        ("lease", "sha256:" + "2" * 64),
        ("report", None),
        ("settle", None),
    ]
    assert chain.verify(ledger) == []
    edited = ledger.model_copy(
        update={
            "entries": [
                ledger.entries[0].model_copy(update={"policy_hash": "sha256:" + "3" * 64}),
                *ledger.entries[1:],
            ]
        }
    )
    assert "entry 1 (lease l1): hash does not match its content: it was edited" in [
        str(problem) for problem in chain.verify(edited)
    ]


def test_verify_catches_a_lease_that_used_more_than_it_was_granted() -> None:
    working = book.Book(wire.Ledger(), _limits())
    _grant(working, "l1", 2)
    ledger = working.snapshot()
    edited = ledger.model_copy(
        update={"leases": [ledger.leases[0].model_copy(update={"used": [9 * UNIT, 0]})]}
    )
    assert [str(problem) for problem in chain.verify(edited)] == [
        "lease l1: used more than it was granted"
    ]


def test_zcdp_and_rdp_lease_in_their_own_units() -> None:
    for mode in ("zcdp", "rdp"):
        working = book.Book(
            wire.Ledger(), _limits(team_epsilon=1.0, total=2.0, accounting=mode, delta=1e-5)
        )
        gaussian = _release("0.1", "gaussian")
        cost = working._accountant.release_cost(gaussian)
        granted = 0
        for number in range(200):
            outcome = _grant(working, f"l{number}", 50, pod=f"p{number % 40}", release=gaussian)
            if not outcome.ok:
                assert outcome.code in ("exhausted", "too-many-leases"), outcome
                break
            assert outcome.lease is not None
            assert outcome.lease.granted == [u * outcome.releases_left for u in cost.units]
            granted += outcome.releases_left
            _report(working, f"l{number}", 1, outcome.releases_left, settle=True, release=gaussian)
        assert granted > 0
        # Exactly as many releases as charging one by one admits.
        one_by_one = book.Book(
            wire.Ledger(), _limits(team_epsilon=1.0, total=2.0, accounting=mode, delta=1e-5)
        )
        charged = 0
        while one_by_one.charge(
            book.ChargeRequest(request_id=f"c{charged}", consumer=_consumer(), release=gaussian),
            NOW,
        ).ok:
            charged += 1
        assert granted == charged, mode


# -- any interleaving of many holders --------------------------------------------------------


@dataclasses.dataclass
class _Holder:
    """An honest sidecar: releases only under a live lease, never more than it holds."""

    pod: str
    lease: str | None = None
    left: int = 0
    batch: int = 0
    unreported: int = 0
    expires: datetime.datetime = NOW
    leases: int = 0


_STEP = st.tuples(
    st.integers(min_value=0, max_value=5),
    st.sampled_from(["grant", "release", "report", "renew", "settle", "tick"]),
    st.integers(min_value=1, max_value=8),
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, max_size=120), quota=st.integers(min_value=1, max_value=40))
def test_no_interleaving_overspends_and_every_release_is_covered(
    steps: list[tuple[int, str, int]], quota: int
) -> None:
    budget = _limits(team_epsilon=quota / 10, total=quota / 10 + 1)
    ledger = wire.Ledger()
    holders = [_Holder(pod=f"pod-{n}") for n in range(6)]
    now = NOW
    released = 0  # every release any holder made, reported or not
    # Releases made under a lease that was then written off unreported: the write-off counts
    # the whole lease as spent, so they are inside ``written_off``, not beside it.
    inside_write_offs = 0

    for index, action, amount in steps:
        # Each step is one group commit on a freshly loaded Book, as the writer applies them.
        working = book.Book(ledger, budget)
        working.expire_leases(now)
        holder = holders[index]
        if holder.lease is not None and holder.lease not in working.leases:
            inside_write_offs += holder.unreported
            holder.lease, holder.left, holder.unreported = None, 0, 0  # written off
        if action == "grant" and holder.lease is None:
            holder.leases += 1
            lease_id = f"{holder.pod}-{holder.leases}"
            outcome = _grant(working, lease_id, amount, pod=holder.pod, now=now, seconds=5)
            if outcome.ok:
                holder.lease, holder.left, holder.batch = lease_id, outcome.releases_left, 0
                holder.expires = now + datetime.timedelta(seconds=5)
        elif action == "release" and holder.lease is not None and now < holder.expires:
            count = min(amount, holder.left)
            holder.left -= count
            holder.unreported += count
            released += count
        elif action in ("report", "renew", "settle") and holder.lease is not None:
            holder.batch += 1
            outcome = _report(
                working,
                holder.lease,
                holder.batch,
                holder.unreported,
                pod=holder.pod,
                renew=amount if action == "renew" else None,
                settle=action == "settle",
                now=now,
            )
            assert outcome.ok, outcome
            holder.unreported = 0
            if action == "settle":
                holder.lease, holder.left = None, 0
            else:
                holder.left = outcome.releases_left
                if action == "renew":
                    holder.expires = now + datetime.timedelta(seconds=30)
        elif action == "tick":
            now += datetime.timedelta(seconds=amount)
        ledger = working.snapshot()

        spent = ledger.spent[0]
        team_spent = {team.team: team.spent[0] for team in ledger.teams}
        assert spent <= budget.total.units[0]  # never over the total
        assert team_spent.get("analytics", 0) <= budget.teams["analytics"].units[0]
        assert released * UNIT <= spent  # every release is covered by a durable charge
        assert chain.verify(ledger) == []

    # Settle everything still open: spent is exactly what was released plus write-offs.
    working = book.Book(ledger, budget)
    for holder in holders:
        if holder.lease is not None and holder.lease not in working.leases:
            inside_write_offs += holder.unreported  # written off by another holder's step
        elif holder.lease is not None:
            holder.batch += 1
            _report(
                working, holder.lease, holder.batch, holder.unreported, pod=holder.pod, settle=True
            )
    ledger = working.snapshot()
    written_off = ledger.written_off[0] if ledger.written_off else 0
    assert ledger.leases == []
    assert ledger.spent[0] == (released - inside_write_offs) * UNIT + written_off
    assert chain.verify(ledger) == []


@settings(max_examples=60, deadline=None)
@given(
    quota=st.integers(min_value=1, max_value=300),
    holders=st.integers(min_value=1, max_value=50),
    requested=st.integers(min_value=1, max_value=100),
)
def test_greedy_holders_drain_the_budget_exactly(quota: int, holders: int, requested: int) -> None:
    """Holders that spend everything they get and renew until refused release exactly the
    quota's worth of releases (sizes stay >= 1 while one fits, so nothing is stranded)."""
    budget = _limits(team_epsilon=quota / 10, total=quota / 10 + 1)
    working = book.Book(wire.Ledger(), budget)
    live: dict[int, tuple[str, int, int]] = {}
    released = 0
    refused: set[int] = set()
    for number in range(holders):
        outcome = _grant(working, f"h{number}", requested, pod=f"pod-{number}")
        if outcome.ok:
            live[number] = (f"h{number}", 0, outcome.releases_left)
        else:
            refused.add(number)
    while live:
        for number, (lease_id, batch, left) in list(live.items()):
            released += left
            outcome = _report(
                working, lease_id, batch + 1, left, pod=f"pod-{number}", renew=requested
            )
            assert outcome.ok
            if outcome.releases_left:
                live[number] = (lease_id, batch + 1, outcome.releases_left)
            else:
                _report(working, lease_id, batch + 2, 0, pod=f"pod-{number}", settle=True)
                del live[number]
    assert released == quota
    assert working.team_epsilon_remaining("analytics") == 0
    assert _grant(working, "late", 1, pod="late").code == "exhausted"
    assert chain.verify(working.snapshot()) == []
