"""Release deadlines with a fake clock: the padded step always ends on a deadline boundary."""

from __future__ import annotations

import time

import hypothesis
import pytest
from hypothesis import strategies

from hush.sidecar import deadline


class FakeClock:
    """A monotonic clock that only moves when the step works or the padding sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def step(self, seconds: float, value: str = "answer") -> str:
        self.now += seconds
        return value


def _padded(clock: FakeClock, seconds: float) -> deadline.ReleaseDeadline:
    return deadline.ReleaseDeadline(seconds, clock=clock, sleep=clock.sleep)


@pytest.mark.parametrize("work", [0.0, 0.0001, 0.003, 0.004999])
def test_a_step_within_the_deadline_ends_exactly_at_it(work: float) -> None:
    clock = FakeClock()
    started = clock.now
    padded = _padded(clock, 0.005).run(lambda: clock.step(work))
    assert padded.value == "answer"
    assert (padded.periods, padded.overran) == (1, False)
    assert clock.now == pytest.approx(started + 0.005, abs=1e-12)


@pytest.mark.parametrize(("work", "periods"), [(0.0051, 2), (0.01, 2), (0.0101, 3), (0.049, 10)])
def test_an_overrun_is_released_at_the_next_multiple_of_the_deadline(
    work: float, periods: int
) -> None:
    clock = FakeClock()
    started = clock.now
    padded = _padded(clock, 0.005).run(lambda: clock.step(work))
    assert (padded.periods, padded.overran) == (periods, True)
    assert clock.now == pytest.approx(started + periods * 0.005, abs=1e-12)


def _observed(work: float) -> float:
    clock = FakeClock()
    started = clock.now
    _padded(clock, 0.005).run(lambda: clock.step(work))
    return clock.now - started


@hypothesis.given(work=strategies.floats(0, 0.0049), other=strategies.floats(0, 0.0049))
def test_the_observed_duration_does_not_depend_on_the_work(work: float, other: float) -> None:
    assert _observed(work) == pytest.approx(_observed(other), abs=1e-12)


def test_a_failing_step_is_padded_too_and_its_error_kept() -> None:
    clock = FakeClock()
    started = clock.now

    def fail() -> str:
        clock.step(0.001)
        raise RuntimeError("sampler failed")

    with pytest.raises(RuntimeError, match="sampler failed"):
        _padded(clock, 0.005).run(fail)
    assert clock.now == pytest.approx(started + 0.005, abs=1e-12)


def test_an_early_wake_up_sleeps_again() -> None:
    clock = FakeClock()
    started = clock.now

    def short_sleep(seconds: float) -> None:  # the first sleep ends after 1 ms
        clock.sleeps.append(seconds)
        clock.now += 0.001 if len(clock.sleeps) == 1 else seconds

    padded = deadline.ReleaseDeadline(0.005, clock=clock, sleep=short_sleep)
    padded.run(lambda: clock.step(0.002))
    assert clock.now == pytest.approx(started + 0.005, abs=1e-12)
    assert clock.sleeps == pytest.approx([0.003, 0.002])


def test_a_zero_deadline_pads_nothing() -> None:
    clock = FakeClock()
    padded = _padded(clock, 0.0).run(lambda: clock.step(0.02))
    assert (padded.periods, clock.sleeps) == (1, [])


@pytest.mark.parametrize("seconds", [-0.001, float("nan"), float("inf")])
def test_nonsense_deadlines_are_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="release deadline"):
        deadline.ReleaseDeadline(seconds)


def test_the_real_clock_pads_to_the_deadline() -> None:
    started = time.monotonic()
    padded = deadline.ReleaseDeadline(0.02).run(lambda: "done")
    elapsed = time.monotonic() - started
    assert padded.value == "done"
    assert elapsed >= 0.02
