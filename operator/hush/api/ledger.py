"""Wire shape of the privacy ledger kept in ``PrivacyBudget.status.ledger``.

The ledger is append-only and hash-chained: every charge, lease grant, report of releases
under a lease, settlement and write-off is an entry whose hash covers the previous entry's
hash and its own content, so an edit, a dropped entry or a reordering is detected by
``hush ledger verify``. Status must stay small (tens of KiB) forever, so old entries are
folded into one cumulative checkpoint that keeps per-consumer totals, the count, the
first/last sequence and the head hash at the fold; open leases are bounded by
``MAX_LEASES``.

Costs are integer units of the budget's accounting mode (see ``hush.privacy.accounting``):
sums of integers cannot round past a cap the way float sums can.

This module owns the shape only; ``hush.ledger`` owns the transitions and the checks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import pydantic

from hush.api import common

# Bounds that keep status under 64 KiB however long the history (see docs/design/0007).
MAX_ENTRIES = 24
MAX_RESERVATIONS = 128
MAX_RECENT_REQUESTS = 64
MAX_CONSUMER_TOTALS = 64
# Open leases kept in status (docs/design/0021-leases.md): one per live sidecar and budget,
# so this bounds the pods that may hold a lease on one budget at once.
MAX_LEASES = 128

# "lease" grants (or tops up) a lease: its full amount counts as spent at once. "report"
# records releases made under a lease (already counted by the lease). "settle" returns a
# lease's unspent units; "write-off" closes an expired lease, its unspent units staying spent.
Action = Literal[
    "reserve", "commit", "release", "charge", "renew", "lease", "report", "settle", "write-off"
]
RequestState = Literal["reserved", "committed", "released", "settled", "written-off"]
LEASE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,48}$"

_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_HASH = pydantic.Field(max_length=64, pattern=r"^[0-9a-f]{64}$")


def _units() -> Any:
    return pydantic.Field(
        default_factory=list,
        max_length=64,
        description="Cost in the integer units of the budget's accounting mode.",
    )


class Consumer(common.ResourceModel):
    """Who spent: the pod, the policy it runs under and the team it is charged to."""

    namespace: str = pydantic.Field(max_length=63)
    pod: str = pydantic.Field(default="", max_length=253)
    policy: str = pydantic.Field(max_length=253)
    team: str = pydantic.Field(max_length=63)


class Entry(common.ResourceModel):
    """One ledger event. ``hash`` = SHA-256(previousHash + canonical JSON of the rest)."""

    sequence: int = pydantic.Field(ge=1)
    time: str = pydantic.Field(max_length=32)
    action: Action
    request_id: str = pydantic.Field(max_length=64, pattern=_ID_PATTERN)
    consumer: Consumer
    mechanism: str = pydantic.Field(default="", max_length=32)
    noise_scale: str = pydantic.Field(default="", max_length=40)
    sensitivity: str = pydantic.Field(default="", max_length=40)
    epsilon: str = pydantic.Field(default="", max_length=40)
    delta: str = pydantic.Field(default="", max_length=40)
    cost: list[int] = _units()
    # Only "report" entries carry these two; when None they are left out of the hash, so
    # entries written before leases existed verify unchanged.
    releases: int | None = pydantic.Field(
        default=None, ge=1, description="Releases this report entry records (one route)."
    )
    requests: str | None = pydantic.Field(
        default=None,
        max_length=64,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the reported releases' '<requestId> <time>' lines, in order.",
    )
    # The policy hash the pod was built from (its sidecar's baked ``policyHash``, checked
    # against the policy's current hash before the entry is written), so the report can say
    # which policy spec was in force when. Hashed only when set, like the two above.
    policy_hash: str | None = pydantic.Field(
        default=None,
        max_length=80,
        description="The charging policy's hash the pod was built from (its policyHash).",
    )
    previous_hash: str = _HASH
    hash: str = _HASH


class TeamSpent(common.ResourceModel):
    team: str = pydantic.Field(max_length=63)
    spent: list[int] = _units()


class Reservation(common.ResourceModel):
    """A reserved charge not yet committed or released; it counts as spent."""

    request_id: str = pydantic.Field(max_length=64, pattern=_ID_PATTERN)
    consumer: Consumer
    cost: list[int] = _units()
    sequence: int = pydantic.Field(ge=1)


class Lease(common.ResourceModel):
    """An open lease: units granted to one pod, counted as spent in full until settled.

    ``granted`` is everything the lease was given (its grant and top-ups), ``used`` what the
    releases reported under it cost, priced from the policy. ``reports`` is the number of
    the last report batch applied, so a retried report is recognised and never counted
    twice. An open lease past ``expires`` is written off.
    """

    lease_id: str = pydantic.Field(max_length=48, pattern=LEASE_ID_PATTERN)
    consumer: Consumer
    route: str = pydantic.Field(max_length=512, description="The route the lease is sized by.")
    granted: list[int] = _units()
    used: list[int] = _units()
    releases: int = pydantic.Field(default=0, ge=0)
    reports: int = pydantic.Field(default=0, ge=0)
    expires: str = pydantic.Field(max_length=32)
    sequence: int = pydantic.Field(ge=1, description="The entry that granted the lease.")


# Ledgers now keep their request window as strings (``Ledger.recent_requests``); this
# object form is how earlier ledgers stored it in ``Ledger.recent``, still read.
class RecentRequest(common.ResourceModel):
    """A request id seen recently, so that a retry is answered, never charged twice."""

    request_id: str = pydantic.Field(max_length=64, pattern=_ID_PATTERN)
    state: RequestState
    sequence: int = pydantic.Field(ge=1)


# "<requestId> <state> <sequence>": a string per id instead of an object with three fields
# makes every status write cheaper for the apiserver, the operator and its watchers (the
# window is 64 ids; docs/design/0016-compact-request-window.md has the numbers).
_RECENT_PATTERN = (
    r"^[A-Za-z0-9._:-]{1,64} (reserved|committed|released|settled|written-off) [1-9][0-9]{0,18}$"
)
_RECENT = re.compile(_RECENT_PATTERN)
RecentText = Annotated[str, pydantic.Field(max_length=104, pattern=_RECENT_PATTERN)]


def encode_recent(request_id: str, state: RequestState, sequence: int) -> str:
    """The ``recentRequests`` item for one id."""
    return f"{request_id} {state} {sequence}"


def split_recent(text: str) -> tuple[str, RequestState, int]:
    """The id, state and sequence that ``encode_recent`` wrote; ValueError if malformed."""
    if _RECENT.fullmatch(text) is None:
        raise ValueError(f"not a recent request '<id> <state> <sequence>': {text!r}")
    request_id, state, sequence = text.split(" ")
    return request_id, state, int(sequence)  # type: ignore[return-value]  # the pattern


class ConsumerTotal(common.ResourceModel):
    """What one (namespace, policy, team) spent in the compacted part of the ledger."""

    namespace: str = pydantic.Field(max_length=63)
    policy: str = pydantic.Field(max_length=253)
    team: str = pydantic.Field(max_length=63)
    count: int = pydantic.Field(ge=0)
    cost: list[int] = _units()


class Checkpoint(common.ResourceModel):
    """All entries up to ``lastSequence``, folded. ``hash`` covers everything else here."""

    first_sequence: int = pydantic.Field(ge=1)
    last_sequence: int = pydantic.Field(ge=1)
    count: int = pydantic.Field(ge=0)
    head_hash: str = _HASH
    spent: list[int] = _units()
    consumers: list[ConsumerTotal] = pydantic.Field(
        default_factory=list, max_length=MAX_CONSUMER_TOTALS
    )
    hash: str = _HASH


class Ledger(common.ResourceModel):
    """The budget's ledger: running totals, open reservations, newest entries, checkpoint."""

    accounting: str = pydantic.Field(default="", max_length=8)
    window: int = pydantic.Field(
        default=0, ge=0, description="Renewal window the spent amounts belong to."
    )
    lifetime_spent: list[int] = pydantic.Field(
        default_factory=list,
        max_length=64,
        description="Cost over every renewal window (spent only resets per window).",
    )
    sequence: int = pydantic.Field(default=0, ge=0, description="Sequence of the newest entry.")
    head_hash: str = pydantic.Field(default="0" * 64, max_length=64)
    spent: list[int] = _units()
    epsilon_spent: float = pydantic.Field(
        default=0.0, description="Epsilon spent (rounded up), for CEL transition rules."
    )
    teams: list[TeamSpent] = pydantic.Field(
        default_factory=list, max_length=64, json_schema_extra=common.list_map("team")
    )
    reservations: list[Reservation] = pydantic.Field(
        default_factory=list, max_length=MAX_RESERVATIONS
    )
    recent: list[RecentRequest] = pydantic.Field(
        default_factory=list,
        max_length=MAX_RECENT_REQUESTS,
        description="Deprecated: the request window as objects, as ledgers written before "
        "recentRequests kept it. Read, then written empty.",
    )
    recent_requests: list[RecentText] = pydantic.Field(
        default_factory=list,
        max_length=MAX_RECENT_REQUESTS,
        description="The newest request ids, oldest first, each as '<requestId> <state> "
        "<sequence>': a retry of one of them is answered, never charged twice.",
    )
    leases: list[Lease] = pydantic.Field(
        default_factory=list,
        max_length=MAX_LEASES,
        description="Open leases, oldest first; each counts as spent in full until settled.",
    )
    leases_written_off: int = pydantic.Field(
        default=0, ge=0, description="Leases that expired unsettled, ever (their units stay spent)."
    )
    written_off: list[int] = pydantic.Field(
        default_factory=list,
        max_length=64,
        description="Unspent units of expired leases, ever: counted as spent, never released.",
    )
    entries: list[Entry] = pydantic.Field(default_factory=list, max_length=MAX_ENTRIES)
    checkpoint: Checkpoint | None = None

    def request_window(self) -> list[tuple[str, RequestState, int]]:
        """The idempotency window as (request id, state, sequence), oldest first, from
        either form (``recent`` first: a ledger holds the old form only until its first
        write by this version)."""
        return [
            *((item.request_id, item.state, item.sequence) for item in self.recent),
            *(split_recent(text) for text in self.recent_requests),
        ]
