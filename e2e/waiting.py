"""Bounded waiting for e2e tests: poll a predicate, fail with a description on timeout.

Every wait in the suite goes through :func:`wait_for`, so none can hang a run and every
timeout says what was awaited and what was last seen. There is deliberately no retry of the
*test*: a wait is for eventually-consistent state (controllers, kwok stages), not for flakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """A bounded wait ran out; the message says for what and what was last observed."""


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 120,
    interval: float = 1,
    description: str,
    observe: Callable[[], object] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Exceptions from ``predicate`` propagate immediately: an API error is a failure, not a
    reason to keep polling. ``observe``, if given, is called on timeout and its result is
    put into the error, to show the state that was never reached.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            seen = f"; observed: {observe()}" if observe is not None else ""
            raise WaitTimeoutError(
                f"Timed out after {timeout:.0f}s waiting for {description} "
                f"(last result: {result!r}{seen})"
            )
        time.sleep(interval)
