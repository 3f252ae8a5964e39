"""Noise drawn ahead of time: pools of OpenDP's integer samples, popped on the request path.

Owns the pools (one per distribution), the thread that refills them, and ``PooledSampler``,
a ``mechanisms.Sampler`` that adds pooled noise. docs/design/0022-pooled-noise.md argues that
it is the same mechanism as ``mechanisms.build``'s; the short form:

- Every kind OpenDP 0.16 offers the sidecar is an integer sampler in disguise. The discrete
  kinds add discrete Laplace / Gaussian noise to an i64 answer (saturating). ``laplace`` and
  ``gaussian`` over f64 (``k = LATTICE_EXPONENT``) round each input to the nearest multiple
  of ``2**k`` (ties up: ``find_nearest_multiple_of_2k``), add discrete noise of scale
  ``scale * 2**-k`` to that integer and map ``(index + noise) * 2**k`` back to the nearest
  float. So a pool holds integers drawn from OpenDP's own integer mechanism at the integer
  scale (releasing a vector of zeros, one vector call per refill), and the request path does
  the rest in exact integer arithmetic. Same k, so ``charged_sensitivity``'s slack is
  unchanged.
- Each sample is popped (used exactly once), samples are independent of each other and of
  the answers (drawn before the answer exists), never logged, and dropped at ``close``.
- OpenDP 0.16's Python API has no integer type wider than i64, so a draw saturates at
  ``+-2**63``. A pool exists only where that happens with probability below ``2**-100``
  per sample (``poolable``); a saturated sample retires its pool (nothing drawn with it is
  used). Wider scales (``laplace`` above ~28.8, ``gaussian`` above ~170, both in answer
  units) draw on the request path as before.
- An empty pool never blocks: the release draws directly from OpenDP (same distribution)
  and the miss is counted (``on_miss``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import opendp.prelude as dp
import structlog
from opendp.mod import OpenDPException

from hush.privacy import kinds, mechanisms

logger = structlog.get_logger("hush.privacy.noise_pool")

DEFAULT_SIZE = 4096
"""Samples a pool holds when full; refilled when it falls below a quarter of that."""

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
# Where a draw from the i64 sampler saturates with probability at most 2**-100: discrete
# Laplace P(|X| >= t) <= 2 exp(-t / s), so t >= 71 s; discrete Gaussian is sub-Gaussian
# with variance proxy sigma**2 (Canonne, Kamath & Steinke 2020), P(|X| >= t) <=
# 2 exp(-t**2 / (2 sigma**2)), so t >= 12 sigma.
_TAIL_MARGIN = {"L1": 71, "L2": 12}
_LATTICE_DENOMINATOR = 1 << -mechanisms.LATTICE_EXPONENT

Drawer = Callable[[bool, float, int], list[int]]
"""``(gaussian, integer_scale, count)`` -> that many independent integer samples."""


@dataclasses.dataclass(frozen=True)
class PoolKey:
    """One distribution: discrete Gaussian (or Laplace) noise of this scale on the integers."""

    gaussian: bool
    integer_scale: float


def integer_scale(mechanism: kinds.Mechanism, scale: float) -> float:
    """The scale of the integer noise OpenDP adds for ``mechanism`` at ``scale`` (exact)."""
    if kinds.is_discrete(mechanism):
        return scale
    # A power-of-two factor: exact in binary floating point (no overflow below 2**971).
    return math.ldexp(scale, -mechanisms.LATTICE_EXPONENT)


def poolable(mechanism: kinds.Mechanism, scale: float) -> bool:
    """Whether i64 draws of this noise saturate with probability below 2**-100."""
    margin = _TAIL_MARGIN[kinds.norm(mechanism)]
    return integer_scale(mechanism, scale) * margin <= _I64_MAX


def lattice_index(value: float) -> int:
    """OpenDP's ``find_nearest_multiple_of_2k``: ``floor(value * 2**-k + 1/2)``, exactly."""
    numerator, denominator = value.as_integer_ratio()  # the float's exact rational value
    return ((numerator * _LATTICE_DENOMINATOR * 2) // denominator + 1) >> 1


def from_lattice(index: int) -> float:
    """``index * 2**k`` rounded to the nearest float (int / int is correctly rounded)."""
    try:
        result = index / _LATTICE_DENOMINATOR
    except OverflowError as error:
        raise mechanisms.SamplerError("the noisy value is beyond the float range") from error
    return result


@functools.lru_cache(maxsize=64)
def _integer_measurement(gaussian: bool, scale: float) -> Any:
    make = dp.m.make_gaussian if gaussian else dp.m.make_laplace
    distance = dp.l2_distance if gaussian else dp.l1_distance
    domain = dp.vector_domain(dp.atom_domain(T="i64"))
    return make(domain, distance(T="i64"), scale=scale)


def opendp_draw(gaussian: bool, scale: float, count: int) -> list[int]:
    """``count`` samples of OpenDP's discrete noise: one vector call releasing zeros."""
    try:
        samples = _integer_measurement(gaussian, scale)([0] * count)
    except (OpenDPException, TypeError, ValueError, OverflowError) as error:
        raise mechanisms.SamplerError(f"drawing pooled noise failed: {error}") from error
    if not isinstance(samples, list) or len(samples) != count:
        raise mechanisms.SamplerError("the integer sampler returned a result of the wrong shape")
    return samples


class NoisePool:
    """Samples of one distribution; ``take`` pops, the refill thread (``NoisePools``) pushes."""

    def __init__(self, key: PoolKey, *, size: int, wake: threading.Event) -> None:
        self.key = key
        self.size = size
        self.low_water = max(1, size // 4)  # an empty pool always wants a refill
        self._wake = wake
        self._lock = threading.Lock()
        self._samples: collections.deque[int] = collections.deque()
        self.retired = False

    def __repr__(self) -> str:  # never the samples
        return f"<NoisePool {self.key} {len(self._samples)}/{self.size}>"

    def __len__(self) -> int:
        return len(self._samples)

    def take(self, count: int) -> list[int] | None:
        """``count`` samples, each removed for good; None when the pool has fewer."""
        with self._lock:
            samples = self._samples
            enough = len(samples) >= count
            taken = [samples.popleft() for _ in range(count)] if enough else None
            low = len(samples) < self.low_water
        if low and not self.retired:
            self._wake.set()
        return taken

    @property
    def wants_refill(self) -> bool:
        return not self.retired and len(self._samples) < self.low_water

    def refill(self, draw: Drawer) -> None:
        """Top the pool up to ``size`` with one vector call (made outside the lock)."""
        missing = self.size - len(self._samples)
        if missing <= 0 or self.retired:
            return
        samples = draw(self.key.gaussian, self.key.integer_scale, missing)
        if any(sample in (_I64_MIN, _I64_MAX) for sample in samples):
            # Saturated (probability < 2**-100 per sample): the batch is not used, and the
            # pool stops; releases draw directly from now on.
            logger.warning("Retiring a noise pool whose draw saturated", key=str(self.key))
            self.retire()
            return
        with self._lock:
            self._samples.extend(samples)

    def retire(self) -> None:
        with self._lock:
            self.retired = True
            self._samples.clear()


class PooledSampler:
    """A ``mechanisms.Sampler`` adding noise popped from a pool, or drawn directly if empty."""

    def __init__(
        self, direct: mechanisms.Sampler, pool: NoisePool, on_miss: Callable[[int], None]
    ) -> None:
        self._direct = direct
        self._pool = pool
        self._on_miss = on_miss

    @property
    def mechanism(self) -> kinds.Mechanism:
        return self._direct.mechanism

    @property
    def scale(self) -> float:
        return self._direct.scale

    @property
    def integer(self) -> bool:
        return self._direct.integer

    def __repr__(self) -> str:
        return f"<PooledSampler {self.mechanism} scale={self.scale!r}>"

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        if self.integer:
            integers = mechanisms.integer_inputs(values)
            if not integers:
                return []
            noise = self._pool.take(len(integers))
            if noise is None:
                self._on_miss(len(integers))
                return self._direct.release(values)
            # OpenDP adds in big integers and casts back saturating.
            return [
                min(max(value + sample, _I64_MIN), _I64_MAX)
                for value, sample in zip(integers, noise, strict=True)
            ]
        reals = mechanisms.real_inputs(values)
        if not reals:
            return []
        noise = self._pool.take(len(reals))
        if noise is None:
            self._on_miss(len(reals))
            return self._direct.release(values)
        return [
            from_lattice(lattice_index(value) + sample)
            for value, sample in zip(reals, noise, strict=True)
        ]


class NoisePools:
    """A sidecar's pools, their refill thread, and the pooled samplers of its plans.

    ``plan`` is a drop-in for ``mechanisms.plan`` (``route_cost.route_plan(route,
    planner=pools.plan)``): the same calibration and release, the sampler pooled where the
    scale allows (``poolable``). ``start`` fills every pool in the background; ``close``
    stops the thread and drops every sample.
    """

    def __init__(
        self,
        *,
        size: int = DEFAULT_SIZE,
        draw: Drawer = opendp_draw,
        on_miss: Callable[[int], None] = lambda _count: None,
    ) -> None:
        if size < 1:
            raise ValueError("a noise pool holds at least one sample")
        self._size = size
        self._draw = draw
        self._on_miss = on_miss
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._pools: dict[PoolKey, NoisePool] = {}
        self._samplers: dict[tuple[kinds.Mechanism, float], mechanisms.Sampler] = {}
        self._thread: threading.Thread | None = None
        self.misses = 0

    @property
    def pools(self) -> list[NoisePool]:
        with self._lock:
            return list(self._pools.values())

    def _missed(self, count: int) -> None:
        with self._lock:  # += on an attribute is not atomic across release threads
            self.misses += count
        self._on_miss(count)

    def sampler(self, direct: mechanisms.Sampler) -> mechanisms.Sampler:
        """The pooled sampler for ``direct``'s noise (``direct`` itself if not poolable)."""
        if not poolable(direct.mechanism, direct.scale):
            return direct
        with self._lock:
            cached = self._samplers.get((direct.mechanism, direct.scale))
            if cached is not None:
                return cached
            key = PoolKey(
                kinds.is_gaussian(direct.mechanism), integer_scale(direct.mechanism, direct.scale)
            )
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = NoisePool(key, size=self._size, wake=self._wake)
            pooled = PooledSampler(direct, pool, self._missed)
            self._samplers[(direct.mechanism, direct.scale)] = pooled
        self._wake.set()
        return pooled

    def plan(
        self, mechanism: str, *, sensitivity: Decimal, epsilon: Decimal, delta: Decimal, length: int
    ) -> mechanisms.Plan:
        """``mechanisms.plan`` with its sampler pooled."""
        planned = mechanisms.plan(
            mechanism, sensitivity=sensitivity, epsilon=epsilon, delta=delta, length=length
        )
        return dataclasses.replace(planned, sampler=self.sampler(planned.sampler))

    def start(self) -> None:
        """Start the refill thread (idempotent); it fills every pool, then waits to be woken."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hush-noise-pool", daemon=True)
        self._thread.start()
        self._wake.set()

    def refill_once(self) -> None:
        """Top up every pool below its low-water mark (empty ones included)."""
        for pool in self.pools:
            if self._stopping:
                return
            if pool.wants_refill:
                try:
                    pool.refill(self._draw)
                except mechanisms.SamplerError:
                    # The request path still draws directly; keep the pool and retry later.
                    logger.exception("Refilling a noise pool failed", key=str(pool.key))

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if not self._stopping:
                self.refill_once()

    def close(self) -> None:
        """Stop the refill thread and discard every sample (the samplers then draw directly)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for pool in self.pools:
            pool.retire()
