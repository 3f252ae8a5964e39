"""Write a computed status through kopf's patch, and only when it changed.

Skipping no-op writes matters: every status write is a watch event for every client
and, for the ledger later, a resourceVersion bump that concurrent writers must retry on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
import pydantic


def changed_fields(current: Mapping[str, Any], desired: pydantic.BaseModel) -> dict[str, Any]:
    """The top-level status fields of ``desired`` that differ from ``current``."""
    fields = desired.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {key: value for key, value in fields.items() if current.get(key) != value}


def apply_status(
    patch: kopf.Patch, current: Mapping[str, Any], desired: pydantic.BaseModel
) -> bool:
    """Put the fields of ``desired`` that differ from ``current`` into ``patch``."""
    changes = changed_fields(current, desired)
    for key, value in changes.items():
        patch.status[key] = value
    return bool(changes)
