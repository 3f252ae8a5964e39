"""Pooled noise (hush.privacy.noise_pool): OpenDP's arithmetic, each sample once, off-thread refill.

The distribution tests (KS, variance, the empirical epsilon) of pooled releases are in
test_sidecar_statistics.py, next to the same tests of direct draws.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from hush.api import dppolicy
from hush.privacy import kinds, mechanisms, noise_pool
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import config, proxy

I64_MAX = 2**63 - 1
# Values around the lattice 2**-52: off it, exactly halfway (ties go up, as OpenDP's
# find_nearest_multiple_of_2k), tiny, huge, negative, ordinary.
EDGE_VALUES = [
    0.0,
    -0.0,
    1e-300,
    -1e-300,
    3 * 2.0**-54,
    2.0**-53,
    -(2.0**-53),
    -3 * 2.0**-54,
    5 * 2.0**-54,
    0.1 + 2.0**-54,
    -0.7,
    123.456,
    2.0**60 + 2.0**8,
    1e300,
    -1e300,
]


class CountingDrawer:
    """A stand-in for OpenDP: distinct, increasing samples, and which thread drew them."""

    def __init__(self) -> None:
        self.counter = itertools.count(1)
        self.drawn: list[int] = []
        self.threads: set[int] = set()
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, gaussian: bool, scale: float, count: int) -> list[int]:
        with self.lock:
            self.calls += 1
            self.threads.add(threading.get_ident())
            samples = [next(self.counter) for _ in range(count)]
            self.drawn.extend(samples)
        return samples


class FakeDirect:
    """A direct sampler that says it was used (the fallback)."""

    def __init__(self, mechanism: str, scale: float) -> None:
        self._mechanism = kinds.parse(mechanism)
        self._scale = scale
        self.calls = 0

    @property
    def mechanism(self) -> kinds.Mechanism:
        return self._mechanism

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def integer(self) -> bool:
        return kinds.is_discrete(self._mechanism)

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        self.calls += 1
        return [-1 for _ in values]


def _exact(value: float, noise: int) -> float:
    """OpenDP's float mechanism with integer noise ``noise``, in exact rationals."""
    scaled = Fraction(value) * 2**52
    index = int((scaled + Fraction(1, 2)) // 1)  # nearest, ties up
    return float(Fraction(index + noise, 2**52))  # Fraction -> float rounds correctly


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_pooled_reals_equal_opendp_where_the_noise_is_negligible(mechanism: str) -> None:
    # At scale 1e-300 the integer noise (scale ~4.5e-285 lattice steps) is 0 with
    # overwhelming probability, so both paths return the lattice rounding of the input.
    scale = 1e-300
    direct = mechanisms.build(mechanism, scale, integer=False)
    pools = noise_pool.NoisePools(size=64)
    pooled = pools.sampler(direct)
    assert isinstance(pooled, noise_pool.PooledSampler)
    pools.refill_once()
    assert pooled.release(EDGE_VALUES) == direct.release(EDGE_VALUES)
    assert pools.misses == 0


def test_lattice_arithmetic_is_exact() -> None:
    for value in EDGE_VALUES:
        assert noise_pool.lattice_index(value) == int(
            (Fraction(value) * 2**52 + Fraction(1, 2)) // 1
        )
    noises = [3, -3, 1, 2**60, -(2**62), 7, 0, 2**53 + 1, 12345, -1, 2**61, -5, 9, 2**40, 11]
    drawer = iter([noises])
    pools = noise_pool.NoisePools(size=len(noises), draw=lambda _g, _s, _n: next(drawer))
    sampler = pools.sampler(mechanisms.build("laplace", 2.0, integer=False))
    pools.refill_once()
    released = sampler.release(EDGE_VALUES)
    assert released == [
        _exact(value, noise) for value, noise in zip(EDGE_VALUES, noises, strict=True)
    ]
    assert all(isinstance(value, float) for value in released)


def test_integer_noise_is_added_exactly_and_saturates_like_opendp() -> None:
    noises = [5, -7, 2**62, -(2**62)]
    drawer = iter([noises])
    pools = noise_pool.NoisePools(size=len(noises), draw=lambda _g, _s, _n: next(drawer))
    sampler = pools.sampler(mechanisms.build("discreteLaplace", 3.0, integer=True))
    pools.refill_once()
    assert sampler.release([10, 10, 2**62, -(2**62) - 5]) == [15, 3, I64_MAX, -(2**63)]
    with pytest.raises(ValueError, match="integers"):
        sampler.release([1.5])


def test_a_noisy_value_beyond_the_float_range_fails_closed() -> None:
    # Unreachable with i64 noise (it moves a value by at most 2**11); a stand-in checks that
    # the conversion back to a float fails closed instead of returning infinity.
    pools = noise_pool.NoisePools(size=1, draw=lambda _g, _s, n: [2 ** (1024 + 52)] * n)
    sampler = pools.sampler(mechanisms.build("laplace", 1.0, integer=False))
    pools.refill_once()
    with pytest.raises(mechanisms.SamplerError):
        sampler.release([1.7976931348623157e308])


def test_inputs_are_checked_as_before() -> None:
    pools = noise_pool.NoisePools(size=8, draw=CountingDrawer())
    sampler = pools.sampler(mechanisms.build("gaussian", 1.0, integer=False))
    pools.refill_once()
    with pytest.raises(ValueError, match="finite"):
        sampler.release([float("inf")])
    with pytest.raises(ValueError, match="numbers"):
        sampler.release([True])
    assert sampler.release([]) == []


def test_no_sample_is_used_twice_across_threads() -> None:
    drawer = CountingDrawer()
    pools = noise_pool.NoisePools(size=64, draw=drawer)
    sampler = pools.sampler(FakeDirect("discreteLaplace", 2.0))
    pools.start()
    used: list[int] = []
    used_lock = threading.Lock()

    def client() -> None:
        for _ in range(300):
            noisy = sampler.release([0, 0, 0])
            with used_lock:
                used.extend(int(value) for value in noisy)

    workers = [threading.Thread(target=client) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    pools.close()
    pooled = [value for value in used if value > 0]  # the fallback returns -1
    assert len(pooled) == len(set(pooled)), "a pooled sample was used twice"
    assert set(pooled) <= set(drawer.drawn)
    # Every release of 3 values took 3 samples or fell back as a whole.
    assert len(pooled) + pools.misses == len(used) == 4 * 300 * 3


def test_refill_happens_off_the_calling_thread() -> None:
    drawer = CountingDrawer()
    pools = noise_pool.NoisePools(size=40, draw=drawer)
    sampler = pools.sampler(mechanisms.build("discreteGaussian", 2.0, integer=True))
    [pool] = pools.pools
    pools.start()
    try:
        _wait_for(lambda: len(pool) == 40)
        first_calls = drawer.calls
        for _ in range(31):  # below the low-water mark (10): wakes the refill thread
            sampler.release([0])
        _wait_for(lambda: len(pool) == 40)
        assert drawer.calls == first_calls + 1
        assert threading.get_ident() not in drawer.threads
        assert pools.misses == 0
    finally:
        pools.close()


def test_an_empty_pool_falls_back_to_a_direct_draw_and_counts_it() -> None:
    missed: list[int] = []
    direct = FakeDirect("discreteLaplace", 2.0)
    pools = noise_pool.NoisePools(size=4, draw=CountingDrawer(), on_miss=missed.append)
    sampler = pools.sampler(direct)
    assert sampler.release([1, 2]) == [-1, -1]  # never filled: direct
    pools.refill_once()
    assert sampler.release([1, 2]) == [2, 4]  # samples 1
    assert 2
    assert sampler.release([1, 2, 3]) == [-1, -1, -1]  # 2 left, 3 needed: all direct
    assert sampler.release([1, 2]) == [4, 6]  # the 2 left are still there, unused
    assert direct.calls == 2
    assert missed == [2, 3]
    assert pools.misses == 5


def test_close_stops_the_thread_and_drops_every_sample() -> None:
    drawer = CountingDrawer()
    direct = FakeDirect("gaussian", 1.0)
    pools = noise_pool.NoisePools(size=16, draw=drawer)
    sampler = pools.sampler(direct)
    [pool] = pools.pools
    pools.start()
    _wait_for(lambda: len(pool) == 16)
    pools.close()
    assert len(pool) == 0
    assert pool.retired
    assert not any(thread.name == "hush-noise-pool" for thread in threading.enumerate())
    calls = drawer.calls
    assert sampler.release([1.0]) == [-1]  # after close: direct
    pools.refill_once()
    assert drawer.calls == calls  # a retired pool is never refilled


def test_a_saturated_draw_retires_the_pool() -> None:
    pools = noise_pool.NoisePools(size=4, draw=lambda _g, _s, n: [1] * (n - 1) + [I64_MAX])
    direct = FakeDirect("discreteLaplace", 2.0)
    sampler = pools.sampler(direct)
    pools.refill_once()
    [pool] = pools.pools
    assert pool.retired
    assert len(pool) == 0
    assert sampler.release([0]) == [-1]


def test_pools_exist_only_where_i64_draws_do_not_saturate() -> None:
    laplace, gaussian = kinds.parse("laplace"), kinds.parse("gaussian")
    assert noise_pool.integer_scale(laplace, 3.0) == 3.0 * 2**52
    assert noise_pool.integer_scale(kinds.parse("discreteLaplace"), 3.0) == 3.0
    assert noise_pool.poolable(laplace, 28.0)
    assert not noise_pool.poolable(laplace, 29.0)
    assert noise_pool.poolable(gaussian, 170.0)
    assert not noise_pool.poolable(gaussian, 171.0)
    assert noise_pool.poolable(kinds.parse("discreteGaussian"), 7e17)
    pools = noise_pool.NoisePools(size=4)
    wide = mechanisms.build("laplace", 100.0, integer=False)
    assert pools.sampler(wide) is wide
    assert pools.pools == []


def test_plan_is_mechanisms_plan_with_a_pooled_sampler() -> None:
    pools = noise_pool.NoisePools(size=4)
    arguments = {
        "sensitivity": Decimal(1),
        "epsilon": Decimal("0.5"),
        "delta": Decimal(0),
        "length": 3,
    }
    pooled = pools.plan("laplace", **arguments)
    direct = mechanisms.plan("laplace", **arguments)
    assert pooled.release == direct.release
    assert pooled.length == direct.length
    assert isinstance(pooled.sampler, noise_pool.PooledSampler)
    assert pooled.sampler.scale == direct.sampler.scale
    # The same distribution shares one sampler and pool, whatever the answer's length.
    counts = pools.plan("discreteLaplace", **arguments)
    again = pools.plan("discreteLaplace", **{**arguments, "length": 5})
    assert again.sampler is counts.sampler
    assert len(pools.pools) == 2


def test_nothing_logs_or_shows_a_sample() -> None:
    pools = noise_pool.NoisePools(size=4, draw=lambda _g, _s, n: [987654321] * n)
    sampler = pools.sampler(mechanisms.build("discreteLaplace", 2.0, integer=True))
    pools.refill_once()
    [pool] = pools.pools
    assert "987654321" not in repr(pool) + repr(sampler) + repr(pools)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_sidecar_command_takes_the_pool_size_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hush.cli import sidecar as sidecar_command

    monkeypatch.delenv("HUSH_NOISE_POOL_SIZE", raising=False)
    assert sidecar_command._noise_pool_size(None) == 4096
    assert sidecar_command._noise_pool_size(100) == 100
    assert sidecar_command._noise_pool_size(0) is None
    monkeypatch.setenv("HUSH_NOISE_POOL_SIZE", "512")
    assert sidecar_command._noise_pool_size(None) == 512
    monkeypatch.setenv("HUSH_NOISE_POOL_SIZE", "lots")
    assert sidecar_command._noise_pool_size(None) is None


class IdleAccountant:
    """The sidecar's accountant, never asked anything here."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def charge(self, **_: object) -> object:
        raise AssertionError("no request is made in this test")

    async def policy_status(self, **_: object) -> object:
        raise AssertionError("no request is made in this test")


async def test_the_sidecar_plans_with_pools_fills_them_at_start_and_empties_them_at_close(
    tmp_path: Path,
) -> None:
    spec = dppolicy.DPPolicySpec.model_validate(
        {
            "budgetRef": {"name": "b", "team": "t"},
            "upstream": {"port": 8080},
            "routes": [
                {
                    "path": "/count",
                    "mechanism": "laplace",
                    "epsilon": 1.0,
                    "fields": [{"path": "$.count", "kind": "count"}],
                }
            ],
        }
    )
    token = tmp_path / "token"
    token.write_text("pod-token\n")
    settings = config.SidecarConfig(
        policy_name="pools",
        policy_hash=policy_reconcile.policy_hash(spec),
        policy=spec,
        listen_port=1,
        admin_port=2,
        upstream_port=3,
        accountant_url="http://127.0.0.1:4",
        ca_path=None,
        token_path=str(token),
    )
    sidecar = proxy.Sidecar(settings, accountant=IdleAccountant(), noise_pool_size=32)
    [route] = sidecar._routes
    assert route.plan is not None
    assert isinstance(route.plan.fields[0].plan.sampler, noise_pool.PooledSampler)
    [pool] = sidecar._noise.pools
    assert len(pool) == 0  # nothing drawn before start
    await sidecar.start()
    try:
        _wait_for(lambda: len(pool) == 32)
    finally:
        await sidecar.close()
    assert len(pool) == 0
    assert pool.retired
