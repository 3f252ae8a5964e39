"""Ledger transitions, the hash chain and compaction (pure, no cluster)."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hush.api import ledger as wire
from hush.api import privacybudget
from hush.ledger import book, chain, limits
from hush.privacy import accounting

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
CONSUMER = wire.Consumer(namespace="ns", pod="app-1", policy="stats", team="analytics")


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


def _request(request_id: str, epsilon: str = "0.1", team: str = "analytics") -> book.ChargeRequest:
    return book.ChargeRequest(
        request_id=request_id,
        consumer=CONSUMER.model_copy(update={"team": team}),
        release=accounting.Release(
            mechanism="laplace",
            epsilon=decimal.Decimal(epsilon),
            delta=decimal.Decimal(0),
            sensitivity=decimal.Decimal(1),
            # Rounded up: a scale rounded down would be (rightly) refused as under-noised.
            scale=(decimal.Decimal(1) / decimal.Decimal(epsilon)).quantize(
                decimal.Decimal("1e-9"), rounding=decimal.ROUND_CEILING
            ),
        ),
    )


def test_charges_fit_the_team_quota_exactly_and_no_further() -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=0.3))
    outcomes = [working.charge(_request(f"r{n}"), NOW) for n in range(4)]
    assert [outcome.code for outcome in outcomes] == ["granted"] * 3 + ["exhausted"]
    assert "team analytics's quota" in outcomes[-1].message
    assert working.team_epsilon_remaining("analytics") == 0


def test_the_dataset_total_binds_even_when_the_team_quota_does_not() -> None:
    # Two teams, each with quota 1.0, share a total of 1.5: per-team budgets alone are unsound.
    spec = {
        "dataset": "d",
        "epsilon": 1.5,
        "quotas": [{"team": "analytics", "epsilon": 0.75}, {"team": "growth", "epsilon": 0.75}],
    }
    working = book.Book(
        wire.Ledger(),
        limits.limits_for(privacybudget.PrivacyBudgetSpec.model_validate(spec)),
    )
    for number in range(7):
        assert working.charge(_request(f"a{number}"), NOW).ok
        assert working.charge(_request(f"g{number}", team="growth"), NOW).ok
    assert working.charge(_request("a7", epsilon="0.05"), NOW).ok
    assert working.charge(_request("g7", epsilon="0.05", team="growth"), NOW).ok
    assert not working.charge(_request("a8", epsilon="0.01"), NOW).ok


def test_warn_enforcement_grants_past_the_budget_and_says_so() -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=0.1, enforcement="warn"))
    assert not working.charge(_request("a"), NOW).over_budget
    over = working.charge(_request("b"), NOW)
    assert over.ok
    assert over.over_budget


def test_a_release_whose_noise_does_not_deliver_its_epsilon_is_refused() -> None:
    working = book.Book(wire.Ledger(), _limits())
    request = _request("a")
    under_noised = dataclasses.replace(
        request, release=dataclasses.replace(request.release, scale=decimal.Decimal(5))
    )
    outcome = working.charge(under_noised, NOW)
    assert outcome.code == "under-noised"
    assert not outcome.ok
    assert working.snapshot().sequence == 0


def test_unknown_team_is_refused() -> None:
    working = book.Book(wire.Ledger(), _limits())
    assert working.charge(_request("a", team="marketing"), NOW).code == "no-quota"


def test_there_is_no_refund_or_two_phase_spend_in_the_book() -> None:
    # docs/design/0018: a charge is final; nothing can give its cost back.
    for name in ("reserve", "commit", "release"):
        assert not hasattr(book.Book, name)


def test_a_retried_charge_is_answered_from_the_ledger_and_not_charged_twice() -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=0.25))
    first = working.charge(_request("a"), NOW)
    retry = working.charge(_request("a"), NOW)
    assert (first.code, retry.code, retry.ok, retry.sequence) == ("granted", "duplicate", True, 1)
    assert working.charge(_request("b"), NOW).ok
    assert working.charge(_request("c"), NOW).code == "exhausted"  # 0.3 does not fit 0.25
    snapshot = working.snapshot()
    assert [entry.action for entry in snapshot.entries] == ["charge", "charge"]
    assert chain.verify(snapshot) == []


def test_snapshot_round_trips_through_json() -> None:
    working = book.Book(wire.Ledger(), _limits())
    working.charge(_request("a"), NOW)
    dumped = json.loads(json.dumps(working.snapshot().model_dump(mode="json", by_alias=True)))
    restored = wire.Ledger.model_validate(dumped)
    assert chain.verify(restored) == []
    again = book.Book(restored, _limits())
    assert again.charge(_request("a"), NOW).code == "duplicate"
    assert again.charge(_request("b"), NOW).code == "granted"


def test_the_request_window_is_written_as_strings_and_read_in_either_form() -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=0.5))
    working.charge(_request("b"), NOW)
    working.charge(_request("a"), NOW)
    written = working.snapshot().model_dump(mode="json", by_alias=True)
    assert written["recent"] == []
    assert written["recentRequests"] == ["b committed 1", "a committed 2"]

    # A ledger of the old reserve/commit/release protocol may name a refunded request; a
    # ledger written before recentRequests existed keeps its window as objects.
    strings = dict(written, recentRequests=["b committed 1", "a released 2"])
    legacy = dict(written, recentRequests=[])
    legacy["recent"] = [
        {"requestId": "b", "state": "committed", "sequence": 1},
        {"requestId": "a", "state": "released", "sequence": 2},
    ]
    for form in (strings, legacy):
        again = book.Book(wire.Ledger.model_validate(form), _limits(team_epsilon=0.5))
        assert again.charge(_request("b"), NOW).code == "duplicate"  # not charged twice
        refunded = again.charge(_request("a"), NOW)
        # Not answered as if charged: the sidecar must not release under a refunded id.
        assert (refunded.code, refunded.ok) == ("already-released", False)
        moved = again.snapshot().model_dump(mode="json", by_alias=True)
        assert moved["sequence"] == 2  # nothing charged
        assert moved["recent"] == []  # the first write moves the window to the new form
        assert moved["recentRequests"] == ["b committed 1", "a released 2"]


@pytest.mark.parametrize(
    "text",
    [
        "a committed",
        "a spent 1",
        "a committed 0",
        "a b committed 1",
        "a committed 1 ",
        "ä committed 1",
    ],
)
def test_a_malformed_request_window_item_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="recent"):
        wire.split_recent(text)
    with pytest.raises(pydantic.ValidationError):
        wire.Ledger.model_validate({"recentRequests": [text]})


@given(
    request_id=st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
    state=st.sampled_from(["reserved", "committed", "released"]),
    sequence=st.integers(min_value=1, max_value=2**63 - 1),
)
def test_request_window_items_round_trip(request_id: str, state: Any, sequence: int) -> None:
    text = wire.encode_recent(request_id, state, sequence)
    assert wire.split_recent(text) == (request_id, state, sequence)
    assert wire.Ledger.model_validate({"recentRequests": [text]}).request_window() == [
        (request_id, state, sequence)
    ]


def test_compaction_keeps_status_bounded_and_verifiable() -> None:
    lim = _limits(team_epsilon=1000.0, total=2000.0)
    ledger = wire.Ledger()
    for round_number in range(200):
        working = book.Book(ledger, lim)
        for number in range(50):
            working.charge(_request(f"r{round_number}-{number}", epsilon="0.001"), NOW)
        ledger = working.snapshot()
    assert ledger.sequence == 10_000
    assert len(ledger.entries) <= wire.MAX_ENTRIES
    assert ledger.checkpoint is not None
    assert ledger.checkpoint.count + len(ledger.entries) == 10_000
    assert chain.verify(ledger) == []
    size = len(json.dumps(ledger.model_dump(mode="json", by_alias=True)))
    assert size < 40 * 1024, size


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["entries"][3].update(epsilon="0.0001"), "entry"),
        (lambda d: d["entries"].pop(2), "dropped or reordered"),
        (lambda d: d["entries"].insert(1, d["entries"].pop(3)), "out of order"),
        (lambda d: d["checkpoint"]["spent"].__setitem__(0, 1), "checkpoint"),
        (lambda d: d["spent"].__setitem__(0, d["spent"][0] - 1), "spent disagrees"),
        (lambda d: d["teams"][0]["spent"].__setitem__(0, 0), "team analytics"),
    ],
)
def test_verify_names_every_kind_of_tampering(edit: Any, expected: str) -> None:
    ledger = wire.Ledger()
    working = book.Book(ledger, _limits(team_epsilon=100.0, total=200.0))
    for number in range(60):
        working.charge(_request(f"t{number}", epsilon="0.01"), NOW)
    document = working.snapshot().model_dump(mode="json", by_alias=True)
    assert chain.verify(wire.Ledger.model_validate(document)) == []
    edit(document)
    problems = chain.verify(wire.Ledger.model_validate(document))
    assert problems
    assert any(expected in str(problem) for problem in problems), problems


def test_the_policy_hash_is_hashed_when_recorded_and_old_entries_verify_unchanged() -> None:
    working = book.Book(wire.Ledger(), _limits())
    working.charge(_request("old"), NOW)  # as a caller that sends no hash (an old ledger)
    working.charge(dataclasses.replace(_request("new"), policy_hash="sha256:" + "a" * 64), NOW)
    ledger = working.snapshot()
    old, new = ledger.entries
    # The entry without a hash hashes exactly the content it had before the field existed.
    content = old.model_dump(mode="json", by_alias=True, exclude={"hash"}, exclude_none=True)
    assert "policyHash" not in content
    assert chain.entry_content_hash(old.previous_hash, content) == old.hash
    assert new.policy_hash == "sha256:" + "a" * 64
    assert chain.verify(ledger) == []
    document = ledger.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert chain.verify(wire.Ledger.model_validate(document)) == []  # through the wire too
    for edit in (
        lambda entries: entries[1].update(policyHash="sha256:" + "b" * 64),  # changed
        lambda entries: entries[1].pop("policyHash"),  # dropped
        lambda entries: entries[0].update(policyHash="sha256:" + "a" * 64),  # added
    ):
        edited = json.loads(json.dumps(document))
        edit(edited["entries"])
        problems = [str(problem) for problem in chain.verify(wire.Ledger.model_validate(edited))]
        assert any("hash does not match its content: it was edited" in p for p in problems)


@settings(max_examples=60, deadline=None)
@given(
    quota=st.decimals(min_value="0.01", max_value="5", places=3),
    charges=st.lists(st.decimals(min_value="0.001", max_value="1", places=4), max_size=80),
)
def test_no_sequence_of_charges_exceeds_the_quota(
    quota: decimal.Decimal, charges: list[decimal.Decimal]
) -> None:
    working = book.Book(wire.Ledger(), _limits(team_epsilon=float(quota), total=float(quota) * 2))
    granted = decimal.Decimal(0)
    for number, epsilon in enumerate(charges):
        if working.charge(_request(f"h{number}", epsilon=str(epsilon)), NOW).ok:
            granted += epsilon
    assert granted <= quota


def test_renewal_refunds_each_window_but_keeps_lifetime_and_open_reservations() -> None:
    # An open reservation left by the old reserve/commit protocol: nothing closes it any more,
    # so it counts as spent in every window.
    lim = _limits(team_epsilon=0.3)
    cost = lim.accountant.to_json(lim.accountant.release_cost(_request("open").release))
    legacy = wire.Ledger(
        sequence=1,
        spent=cost,
        lifetime_spent=cost,
        teams=[wire.TeamSpent(team="analytics", spent=cost)],
        reservations=[
            wire.Reservation(request_id="open", consumer=CONSUMER, cost=cost, sequence=1)
        ],
    )
    working = book.Book(legacy, lim)
    for number in range(2):
        assert working.charge(_request(f"w0-{number}"), NOW).ok
    assert not working.charge(_request("w0-full"), NOW).ok  # window 0 is full
    working.renew(1, NOW)
    # The open reservation carried over into window 1: two more fit, not three.
    assert working.charge(_request("w1-a"), NOW).ok
    assert working.charge(_request("w1-b"), NOW).ok
    assert not working.charge(_request("w1-c"), NOW).ok
    snapshot = working.snapshot()
    assert snapshot.window == 1
    assert [item.request_id for item in snapshot.reservations] == ["open"]
    lifetime = working.lifetime_spent
    assert lim.accountant.epsilon_spent(lifetime, decimal.Decimal(0)) == decimal.Decimal("0.5")
    working.renew(0, NOW)  # never backwards
    assert working.window == 1


def test_windows() -> None:
    from hush.ledger import windows

    assert windows.parse_duration("1h30m") == datetime.timedelta(minutes=90)
    assert windows.parse_duration("500ms") == datetime.timedelta(milliseconds=500)
    with pytest.raises(ValueError, match="positive duration"):
        windows.parse_duration("forever")
    anchor = windows.parse_timestamp("2026-11-01T00:00:00Z")
    day = datetime.timedelta(days=1)
    assert windows.window_index(anchor, anchor, day) == 0
    assert windows.window_index(anchor, anchor + day * 3.5, day) == 3
    assert windows.window_index(anchor, anchor - day * 10, day) == 0  # before the anchor


def _renewal(**fields: Any) -> privacybudget.Renewal:
    return privacybudget.Renewal.model_validate(
        {"policy": "perDataBlock", "period": "24h", **fields}
    )


def test_windows_count_from_the_declared_anchor_not_the_creation() -> None:
    from hush.ledger import windows

    created = "2026-11-20T17:45:00Z"
    renewal = _renewal(anchor="2026-11-01T00:00:00Z")
    # 21 days and 12 hours after the anchor, 1 day 18:15 after the creation.
    assert windows.current_window(renewal, created=created, now=NOW) == 21
    # The window boundary is the anchor's midnight, whatever time the object was created.
    midnight = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)
    second = datetime.timedelta(seconds=1)
    assert windows.current_window(renewal, created=created, now=midnight - second) == 21
    assert windows.current_window(renewal, created=created, now=midnight) == 22
    # An anchor with an offset and nanoseconds (as Kubernetes may write) is the same instant.
    shifted = _renewal(anchor="2026-11-01T02:00:00.000000000+02:00")
    assert windows.current_window(shifted, created=created, now=midnight) == 22
    # A future anchor: everything before it is window 0 (nothing renews early).
    future = _renewal(anchor="2027-01-01T00:00:00Z")
    assert windows.current_window(future, created=created, now=NOW) == 0


def test_no_renewal_has_no_window_and_legacy_objects_count_from_their_creation() -> None:
    from hush.ledger import windows

    none = privacybudget.Renewal()
    assert windows.current_window(none, created="2026-11-01T00:00:00Z", now=NOW) is None
    # Stored before anchors were required (the apiserver refuses this spec now).
    legacy = _renewal()
    assert windows.current_window(legacy, created="2026-11-20T12:00:00Z", now=NOW) == 2
    assert windows.current_window(legacy, created=None, now=NOW) is None


def test_renewal_periods_under_an_hour_and_bad_anchors_are_refused() -> None:
    for period in ("1ms", "59m59s", "0.5h"):
        with pytest.raises(pydantic.ValidationError, match="at least 1h"):
            _renewal(period=period, anchor="2026-11-01T00:00:00Z")
    assert _renewal(period="1h", anchor="2026-11-01T00:00:00Z").period == "1h"
    for anchor in ("2026-11-01", "2026-11-01T00:00:00", "yesterday", "2026-13-01T00:00:00Z"):
        with pytest.raises(pydantic.ValidationError):
            _renewal(anchor=anchor)


def test_a_renewed_window_refunds_only_at_the_anchored_boundary() -> None:
    """The accountant's sequence: renew to the current window, then charge."""
    from hush.ledger import windows

    renewal = _renewal(anchor="2026-11-22T00:00:00Z")
    working = book.Book(wire.Ledger(), _limits(team_epsilon=0.2))
    moments = [NOW, NOW + datetime.timedelta(hours=11, minutes=59)]
    for number, moment in enumerate(moments):
        window = windows.current_window(renewal, created=None, now=moment)
        assert window is not None
        working.renew(window, moment)
        assert working.charge(_request(f"w0-{number}"), moment).ok
    assert not working.charge(_request("w0-full"), moments[-1]).ok
    tomorrow = datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC)
    window = windows.current_window(renewal, created=None, now=tomorrow)
    assert window == 1
    working.renew(window, tomorrow)
    assert working.charge(_request("w1-a"), tomorrow).ok
    assert working.snapshot().window == 1
