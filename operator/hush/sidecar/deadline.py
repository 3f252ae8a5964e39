"""Release deadlines: the noising step of an answer takes a fixed time, whatever the noise.

Why. How long a sampler runs can depend on the noise it draws (rejection loops, big-integer
arithmetic on large draws), and a client sees the response time next to the noisy value.
``bench/bench_sampler_timing.py`` measures it for the samplers the sidecar uses: a small but
significant Spearman correlation between |noise| and call time (docs/benchmarks.md, "Sampler
timing"). So the step that depends on the noise (sample, post-process, suppress, encode) is
padded to a per-route deadline (``releaseDeadline`` in the DPPolicy route, default 5 ms):
``ReleaseDeadline.run`` runs the step and then sleeps until ``started + deadline``.

Overruns. A step that takes longer than the deadline is still released, padded to the next
whole multiple of the deadline, so its response time reveals only how many periods it took
(``Padded.periods``), never the fine timing. The proxy counts and logs every overrun.
Refusing an overrun instead would make the released noise conditional on its own magnitude
(slow, i.e. larger, draws would be withheld and redrawn on retry), a truncation of the
distribution the accountant charged for. docs/design/0011-sidecar-release-deadline.md has
the argument and the numbers.

The padding sleeps with ``time.sleep`` (``clock_nanosleep`` on Linux, nanosecond
resolution), so the wake-up time does not depend on how long the step took. asyncio's
timers would not do: the event loop rounds each wait up to whole milliseconds from the
moment it starts waiting, which keeps the step's duration modulo 1 ms in the response time.

Where it runs. The proxy runs ``run`` -- the step and the padding together -- in a worker
thread (release contract, section 5): the event loop never samples, so a concurrent request
(even ``/healthz`` on the admin port, served by the same loop) is never delayed by the time
a sampler took. Sharing the interpreter lock with the loop can stretch the step, but by
how busy the loop is, not by the noise, and the padding absorbs it below the deadline.
``begin``, ``end`` and ``wait`` are the three parts of ``run``, for callers that must split
them. Clock and sleep are injected so tests are deterministic. Owns no I/O besides sleeping.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Padded(Generic[T]):
    """What the step returned, and how many deadline periods it was padded to."""

    value: T
    periods: int

    @property
    def overran(self) -> bool:
        return self.periods > 1


class ReleaseDeadline:
    """Pads a step to ``seconds`` (or its next multiple on overrun); 0 pads nothing."""

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a release deadline must be a finite number >= 0, got {seconds!r}")
        self._seconds = seconds
        self._clock = clock
        self._sleep = sleep

    @property
    def seconds(self) -> float:
        return self._seconds

    def run(self, step: Callable[[], T]) -> Padded[T]:
        """Run ``step``, then wait out the deadline; a failing step is padded too."""
        started = self.begin()
        try:
            value = step()
        finally:
            periods, until = self.end(started)
            self.wait(until)
        return Padded(value=value, periods=periods)

    def begin(self) -> float:
        """The clock reading a step starts at (for callers that wait elsewhere: the proxy)."""
        return self._clock()

    def end(self, started: float) -> tuple[int, float]:
        """(periods, release time) of a step that began at ``started`` and just ended."""
        if self._seconds == 0:
            return 1, started
        elapsed = self._clock() - started
        periods = max(1, math.ceil(elapsed / self._seconds))
        return periods, started + periods * self._seconds

    def wait(self, until: float) -> None:
        """Sleep until the clock reads ``until``; blocking, so the proxy calls it in a thread."""
        # A sleep may end early (a signal the runtime does not retry): sleep again.
        while (remaining := until - self._clock()) > 0:
            self._sleep(remaining)
