"""The lease protocol's wire models, shared by the accountant and (later) the sidecar.

A sidecar asks the accountant for a lease (``POST /v1/leases``), spends it locally, one
release at a time in the budget's integer units, reports its releases in batches (``POST
/v1/leases/{id}/report``, optionally renewing) and settles it when done (``POST
/v1/leases/{id}/settle``); see docs/design/0021-leases.md. Like a charge, nothing here
carries a cost: a request names routes, and the accountant prices each from the DPPolicy
(``extra=forbid``: a body that suggests a cost is malformed, 400).

This module owns the shapes and the outcome codes a client decodes; it does not decide
anything (``hush.ledger.book`` does) or talk to anyone.
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import alias_generators

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
LEASE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,48}$"
# Releases in one report: a second or two of one pod's traffic, with room to spare.
MAX_REPORTED_RELEASES = 10_000

# What a client decodes (never the message): granted or answered from the ledger; or why not.
Outcome = Literal[
    "leased",  # a new lease (200)
    "reported",  # the releases are recorded (200), renewed if asked and anything fitted
    "settled",  # closed, unspent units returned (200)
    "duplicate",  # a retry, answered from the ledger (200)
    "exhausted",  # not one release fits (429)
    "beyond-lease",  # the report uses more than the lease holds (409)
    "out-of-order",  # not the report the lease expects next (409)
    "unknown-lease",  # no such lease (404)
    "not-your-lease",  # another pod's lease (403)
    "expired",  # written off at expiry, or already settled (410)
    "too-many-leases",  # settle one first (429)
    "already-released",  # the id was used before (409)
    "no-quota",  # the team has no quota (403)
    "under-noised",  # the policy's noise does not deliver its epsilon (422)
    "unaccountable",  # partition selection under zCDP/RDP (409)
    "denied",  # authentication, authorisation, stale policy, unknown route (401/403/404/409)
    "bad-request",  # malformed body (400)
    "standby",  # not the active accountant (503)
    "unavailable",  # the budget cannot be written now (503)
]


class Message(pydantic.BaseModel):
    """A wire message: camelCase names, unknown keys refused, immutable."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class LeaseGrantRequest(Message):
    """``POST /v1/leases``: a lease sized for ``releases`` releases of ``route``.

    ``leaseId`` is chosen by the sidecar so that a retried grant finds the lease it may
    already have been given (a lease is never granted twice). ``releases`` is the pod's
    recent rate times a second or two; the accountant grants at most that.
    """

    lease_id: str = pydantic.Field(pattern=LEASE_ID_PATTERN)
    policy: str = pydantic.Field(min_length=1, max_length=253)
    route: str = pydantic.Field(min_length=1, max_length=512)
    policy_hash: str = pydantic.Field(min_length=1, max_length=80)
    releases: int = pydantic.Field(default=1, ge=1, le=1_000_000)
    seconds: int = pydantic.Field(
        default=30, ge=1, le=120, description="How long the lease lives unless renewed."
    )


class ReportedRelease(Message):
    """One release made under a lease: which route, which request, when (RFC 3339)."""

    route: str = pydantic.Field(min_length=1, max_length=512)
    request_id: str = pydantic.Field(pattern=REQUEST_ID_PATTERN)
    time: str = pydantic.Field(min_length=1, max_length=40)


class LeaseReportRequest(Message):
    """``POST /v1/leases/{id}/report`` (and ``/settle``): the releases since the last report.

    ``batch`` numbers the reports of a lease from 1; a retry repeats the number and is never
    counted twice. ``renew`` (report only) asks for that many more releases of the lease's
    route and a new expiry ``seconds`` from now. ``deferrable`` says the sidecar is not
    waiting on the answer (it still holds units), so the accountant may batch it longer.
    """

    policy: str = pydantic.Field(min_length=1, max_length=253)
    policy_hash: str = pydantic.Field(min_length=1, max_length=80)
    batch: int = pydantic.Field(ge=1, le=10**12)
    releases: list[ReportedRelease] = pydantic.Field(
        default_factory=list, max_length=MAX_REPORTED_RELEASES
    )
    renew: int | None = pydantic.Field(default=None, ge=1, le=1_000_000)
    seconds: int = pydantic.Field(default=30, ge=1, le=120)
    deferrable: bool = pydantic.Field(
        default=False,
        description="The sidecar still holds units: the answer may wait (up to 250 ms) so "
        "that many reports share one status write.",
    )


class LeaseAnswer(Message):
    """Every answer of the lease endpoints.

    Units are the budget's accounting mode's integers (``accounting``): ``granted`` and
    ``used`` are the lease's totals, ``added`` what this call granted, ``returned`` what
    settling gave back. ``releasesLeft`` is how many more releases of the lease's route the
    lease holds: the sidecar releases at most that many before it renews.
    """

    outcome: Outcome
    message: str
    lease_id: str | None = None
    sequence: int | None = None
    budget: str | None = None
    team: str | None = None
    accounting: str | None = None
    route: str | None = None
    granted: list[int] | None = None
    used: list[int] | None = None
    added: list[int] | None = None
    returned: list[int] | None = None
    releases_left: int | None = None
    reports: int | None = None
    expires: str | None = None
    epsilon_remaining: str | None = None
    over_budget: bool = False
