"""The ledger's hash chain: how an entry or checkpoint is hashed, and ``verify``.

``entry.hash = SHA-256(entry.previousHash || canonical JSON of the entry without hash)``;
the first retained entry links to the checkpoint's head hash (or to 64 zeros at genesis),
and the checkpoint hashes its own content. Canonical JSON: sorted keys, no whitespace,
ASCII, camelCase names as on the wire, so a verifier in any language can recompute it
from ``kubectl get -o json``.

Threat model: the chain makes *edits through the API* evident — a changed amount, a
dropped, duplicated or reordered entry, totals that disagree with the entries. It is not
keyed, so someone who can write status and recompute every hash could rewrite history;
only the operator's ServiceAccount may write status (RBAC), and the operator logs every
head hash so that an external log can anchor it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from hush.api import ledger as wire

GENESIS_HASH = "0" * 64


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical(document: dict[str, Any]) -> bytes:
    return _CANONICAL.encode(document).encode()


def entry_content_hash(previous_hash: str, content: dict[str, Any]) -> str:
    """The hash of an entry given its wire content without ``hash`` (camelCase keys)."""
    return hashlib.sha256(previous_hash.encode() + canonical(content)).hexdigest()


# Entry fields that are hashed only when set (wire names; added after the first ledgers, so
# older entries lack them and verify unchanged): a report's releases and requests digest
# (leases) and the policy hash the charge was made under.
_OPTIONAL_FIELDS = ("releases", "requests", "policyHash")


def entry_hash(entry: wire.Entry) -> str:
    content = entry.model_dump(mode="json", by_alias=True, exclude={"hash"})
    for name in _OPTIONAL_FIELDS:
        if content.get(name) is None:
            content.pop(name, None)
    return entry_content_hash(entry.previous_hash, content)


def checkpoint_hash(checkpoint: wire.Checkpoint) -> str:
    content = checkpoint.model_dump(mode="json", by_alias=True, exclude={"hash"})
    return hashlib.sha256(canonical(content)).hexdigest()


def signed_cost(entry: wire.Entry) -> list[int]:
    """What the entry adds to ``spent``: reserve, charge and lease (a grant or top-up, in
    full) add; release refunds, and so does settle (a lease's unspent units); renew resets a
    team's window (its cost is what the window had spent, minus open reservations and
    leases, which carry over). A report's releases and a write-off's units were counted by
    their lease already: they add nothing."""
    if entry.action in ("reserve", "charge", "lease"):
        return list(entry.cost)
    if entry.action in ("release", "renew", "settle"):
        return [-unit for unit in entry.cost]
    return [0] * len(entry.cost)


def add_units(left: Sequence[int], right: Sequence[int]) -> list[int]:
    width = max(len(left), len(right))
    padded_left = list(left) + [0] * (width - len(left))
    padded_right = list(right) + [0] * (width - len(right))
    return [a + b for a, b in zip(padded_left, padded_right, strict=True)]


def _padded(left: Sequence[int], right: Sequence[int]) -> list[tuple[int, int]]:
    width = max(len(left), len(right))
    return list(
        zip(
            list(left) + [0] * (width - len(left)),
            list(right) + [0] * (width - len(right)),
            strict=True,
        )
    )


def _same(left: Sequence[int], right: Sequence[int]) -> bool:
    width = max(len(left), len(right))
    return list(left) + [0] * (width - len(left)) == list(right) + [0] * (width - len(right))


@dataclasses.dataclass(frozen=True)
class Problem:
    """One way the ledger is not what the operator wrote; ``where`` names the spot."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def verify(ledger: wire.Ledger) -> list[Problem]:
    """Every inconsistency in ``ledger``; an empty list means it verifies."""
    problems: list[Problem] = []
    checkpoint = ledger.checkpoint
    expected_previous = GENESIS_HASH
    expected_sequence = 1
    spent: list[int] = []
    team_spent: dict[str, list[int]] = {}

    if checkpoint is not None:
        if checkpoint_hash(checkpoint) != checkpoint.hash:
            problems.append(Problem("checkpoint", "hash does not match its content: it was edited"))
        if checkpoint.first_sequence != 1:
            problems.append(Problem("checkpoint", "does not start at sequence 1"))
        if checkpoint.count != checkpoint.last_sequence - checkpoint.first_sequence + 1:
            problems.append(Problem("checkpoint", "count disagrees with its sequence range"))
        consumer_sum: list[int] = []
        for consumer in checkpoint.consumers:
            consumer_sum = add_units(consumer_sum, consumer.cost)
            team_spent[consumer.team] = add_units(team_spent.get(consumer.team, []), consumer.cost)
        if not _same(consumer_sum, checkpoint.spent):
            problems.append(Problem("checkpoint", "per-consumer totals do not add up to spent"))
        spent = list(checkpoint.spent)
        expected_previous = checkpoint.head_hash
        expected_sequence = checkpoint.last_sequence + 1

    for entry in ledger.entries:
        where = f"entry {entry.sequence} ({entry.action} {entry.request_id})"
        if entry.sequence != expected_sequence:
            problems.append(
                Problem(
                    where,
                    f"expected sequence {expected_sequence}: an entry is missing or out of order",
                )
            )
        if entry.previous_hash != expected_previous:
            problems.append(
                Problem(where, "does not link to the entry before it: dropped or reordered")
            )
        if entry_hash(entry) != entry.hash:
            problems.append(Problem(where, "hash does not match its content: it was edited"))
        spent = add_units(spent, signed_cost(entry))
        team = entry.consumer.team
        team_spent[team] = add_units(team_spent.get(team, []), signed_cost(entry))
        expected_previous = entry.hash
        expected_sequence = entry.sequence + 1

    if ledger.sequence != expected_sequence - 1:
        problems.append(
            Problem(
                "ledger", f"sequence is {ledger.sequence}, entries end at {expected_sequence - 1}"
            )
        )
    for lease in ledger.leases:
        where = f"lease {lease.lease_id}"
        if any(used > granted for used, granted in _padded(lease.used, lease.granted)):
            problems.append(Problem(where, "used more than it was granted"))
        if lease.sequence > ledger.sequence:
            problems.append(Problem(where, "granted by an entry the ledger does not have"))
    if ledger.head_hash != expected_previous:
        problems.append(Problem("ledger", "headHash is not the hash of the newest entry"))
    if not _same(spent, ledger.spent):
        problems.append(Problem("ledger", "spent disagrees with the entries and checkpoint"))
    recorded_teams = {team.team: list(team.spent) for team in ledger.teams}
    for team in sorted(set(recorded_teams) | set(team_spent)):
        if not _same(recorded_teams.get(team, []), team_spent.get(team, [])):
            problems.append(
                Problem(f"team {team}", "spent disagrees with the entries and checkpoint")
            )
    return problems
