"""Renewal windows: which period a moment falls in, for calendar and perDataBlock renewal.

Window 0 starts when the PrivacyBudget was created; window k covers
[created + k·period, created + (k+1)·period). The accountant renews the ledger (see
``Book.renew``) when it first handles an operation in a later window.
"""

from __future__ import annotations

import datetime
import re

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> datetime.timedelta:
    """A Go-style duration such as ``720h``, ``1h30m`` or ``500ms``."""
    position, seconds = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text or seconds <= 0:
        raise ValueError(f"not a positive duration: {text!r} (use e.g. 24h, 30m, 90s)")
    return datetime.timedelta(seconds=seconds)


def parse_timestamp(text: str) -> datetime.datetime:
    """A Kubernetes RFC 3339 timestamp (``2026-11-22T12:00:00Z``)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def window_index(
    created: datetime.datetime, now: datetime.datetime, period: datetime.timedelta
) -> int:
    """The renewal window ``now`` falls in (0 before or at creation)."""
    if now <= created:
        return 0
    return int((now - created) // period)
