"""Renewal windows: which period a moment falls in, for calendar and perDataBlock renewal.

Window k covers [anchor + k·period, anchor + (k+1)·period), where the anchor is the time the
privacy owner declared in ``spec.renewal.anchor`` (for perDataBlock, the start of the first
data block: windows must line up with the data's partitions, or a "new" window reads people
of the previous one). Moments before the anchor are in window 0. The accountant renews the
ledger (see ``Book.renew``) when it first handles an operation in a later window; the ledger
remembers its window, so windows only move forward.

Windows used to count from the object's ``creationTimestamp``, which no data block lines up
with (issue 14, finding 4). An object stored before ``anchor`` existed keeps that origin
(``renewal_anchor``): its renewal can no longer change once spent, so nothing is refunded by
it, and its status says to move to an anchored budget.
"""

from __future__ import annotations

import datetime

from hush.api import privacybudget

# Parsing lives with the resource model (the model validates both); re-exported for callers
# that only think in windows.
parse_duration = privacybudget.parse_duration
parse_timestamp = privacybudget.parse_timestamp


def window_index(
    anchor: datetime.datetime, now: datetime.datetime, period: datetime.timedelta
) -> int:
    """The renewal window ``now`` falls in (0 before or at the anchor)."""
    if now <= anchor:
        return 0
    return int((now - anchor) // period)


def renewal_anchor(renewal: privacybudget.Renewal, created: str | None) -> datetime.datetime | None:
    """Where window 0 starts: the declared anchor, else (objects stored before anchors were
    required) the creation time; None when the budget does not renew."""
    if renewal.policy == "none" or renewal.period is None:
        return None
    if renewal.anchor is not None:
        return parse_timestamp(renewal.anchor)
    return parse_timestamp(created) if created else None


def current_window(
    renewal: privacybudget.Renewal, *, created: str | None, now: datetime.datetime
) -> int | None:
    """The window ``now`` falls in under ``renewal``; None when the budget does not renew."""
    anchor = renewal_anchor(renewal, created)
    if anchor is None or renewal.period is None:
        return None
    return window_index(anchor, now, parse_duration(renewal.period))
