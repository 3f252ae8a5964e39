"""The accountant's wire protocol: what a sidecar sends and what it gets back.

A charge names only the release (``requestId``), the policy and route it releases under and
the policy hash baked into the pod: nothing the sidecar could misreport. The accountant reads
the route from the DPPolicy and computes the cost itself (``hush.privacy.route_cost``); a body
that carries a mechanism, epsilon, delta, sensitivity or scale is malformed (``extra=forbid``:
400), so a sidecar cannot even suggest a cost (docs/design/0018, "Wire").
"""

from __future__ import annotations

import pydantic

from hush.api import spending

# One message base and one request-id rule for the charge and the lease protocols.
REQUEST_ID_PATTERN = spending.REQUEST_ID_PATTERN


class SpendRequest(spending.Message):
    """Charge one release of a policy's route; the cost is the route's, read from the policy."""

    request_id: str = pydantic.Field(pattern=REQUEST_ID_PATTERN)
    policy: str = pydantic.Field(min_length=1, max_length=253)
    route: str = pydantic.Field(min_length=1, max_length=512)
    policy_hash: str = pydantic.Field(
        min_length=1,
        max_length=80,
        description="The policy hash baked into the pod; a stale one is refused (409).",
    )


class Answer(spending.Message):
    """Every response body: the outcome code, a sentence for humans, and the numbers."""

    outcome: str
    message: str
    sequence: int | None = None
    budget: str | None = None
    team: str | None = None
    epsilon_remaining: str | None = None
    over_budget: bool = False


class PolicyStatus(spending.Message):
    """The answer to ``GET /v1/policy-status``: is the caller's baked policy still current?

    Sidecars poll it so that a pod whose policy changed turns not-ready without waiting for
    a charge to be refused. ``policyHash`` is None until the operator has hashed the policy.
    """

    policy: str
    policy_hash: str | None = None
    stale: bool
    message: str
