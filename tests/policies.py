"""Policy objects the unit tests build: one route with overrides.

One place for the smallest valid route (a Laplace count at epsilon 0.5), so that tests of the
cost (``route_cost``) and of the released document (``release``) start from the same policy.
"""

from __future__ import annotations

from typing import Any

from hush.api import dppolicy


def route(**overrides: Any) -> dppolicy.Route:
    """A valid route; keyword arguments replace its keys (wire names: ``domains=...``)."""
    raw: dict[str, Any] = {
        "path": "/stats",
        "mechanism": "laplace",
        "epsilon": 0.5,
        "fields": [{"path": "$.count", "kind": "count"}],
    }
    raw.update(overrides)
    return dppolicy.Route.model_validate(raw)
