"""The accountant's wire protocol: what a sidecar sends and what it gets back.

Amounts travel as JSON numbers or decimal strings and are read exactly (``amounts.exact``).
The request names the policy and route it releases under; the accountant checks both
against the pod that sent it, so a caller can only charge what its own policy allows.
"""

from __future__ import annotations

import decimal
from typing import Literal

import pydantic
from pydantic import alias_generators

from hush.privacy import amounts

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"


class _Message(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


Amount = decimal.Decimal


def _exact(value: object) -> decimal.Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, decimal.Decimal)):
        raise ValueError("must be a number or a decimal string")
    try:
        result = amounts.exact(value)
    except (decimal.InvalidOperation, ValueError) as error:
        raise ValueError("must be a number or a decimal string") from error
    if not result.is_finite() or result < 0:
        raise ValueError("must be a finite, non-negative number")
    return result


class SpendRequest(_Message):
    """Reserve (or charge) the cost of one release under a policy's route."""

    request_id: str = pydantic.Field(pattern=REQUEST_ID_PATTERN)
    policy: str = pydantic.Field(min_length=1, max_length=253)
    route: str = pydantic.Field(min_length=1, max_length=512)
    mechanism: Literal["laplace", "gaussian", "discreteLaplace", "discreteGaussian"]
    epsilon: Amount
    delta: Amount
    sensitivity: Amount
    scale: Amount
    policy_hash: str | None = pydantic.Field(
        default=None,
        max_length=80,
        description="The policy hash baked into the pod; a stale one is refused (409).",
    )

    @pydantic.field_validator("epsilon", "delta", "sensitivity", "scale", mode="before")
    @classmethod
    def _read_exactly(cls, value: object) -> decimal.Decimal:
        return _exact(value)


class CloseRequest(_Message):
    """Commit or release a reservation."""

    request_id: str = pydantic.Field(pattern=REQUEST_ID_PATTERN)
    policy: str = pydantic.Field(min_length=1, max_length=253)


class Answer(_Message):
    """Every response body: the outcome code, a sentence for humans, and the numbers."""

    outcome: str
    message: str
    sequence: int | None = None
    budget: str | None = None
    team: str | None = None
    epsilon_remaining: str | None = None
    over_budget: bool = False


class PolicyStatus(_Message):
    """The answer to ``GET /v1/policy-status``: is the caller's baked policy still current?

    Sidecars poll it so that a pod whose policy changed turns not-ready without waiting for
    a charge to be refused. ``policyHash`` is None until the operator has hashed the policy.
    """

    policy: str
    policy_hash: str | None = None
    stale: bool
    message: str
