"""Write a computed status through kopf's patch, and only when it changed.

Skipping no-op writes matters: every status write is a watch event for every client
and, for the ledger later, a resourceVersion bump that concurrent writers must retry on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
import pydantic


def status_fields(model: pydantic.BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def apply_status(
    patch: kopf.Patch, current: Mapping[str, Any], desired: pydantic.BaseModel
) -> bool:
    """Put the fields of ``desired`` that differ from ``current`` into ``patch``."""
    changed = False
    for key, value in status_fields(desired).items():
        if current.get(key) != value:
            patch.status[key] = value
            changed = True
    return changed
