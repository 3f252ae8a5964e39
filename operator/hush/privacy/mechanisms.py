"""Floating-point-safe noise samplers: OpenDP's, one vector call per answer, objects cached.

Owns turning a vector of true answers into noisy ones, and the sensitivity the ledger must be
charged for that (``charged_sensitivity``). It does not choose the scale
(``hush.privacy.calibration``) nor count the cost (``hush.privacy.accounting``); ``plan``
wires the three together for a route field.

Why OpenDP 0.16 (docs/design/0005-dp-library.md has the measurements): textbook samplers
that add a float drawn by inverse-CDF from a float uniform leak the true answer through the
low-order bits of the result (Mironov, CCS 2012). OpenDP never does float arithmetic on
noise: integers get the exact discrete Laplace / discrete Gaussian samplers of Canonne,
Kamath & Steinke (NeurIPS 2020); reals are rounded to the lattice ``2**LATTICE_EXPONENT``,
noised there with the same exact integer samplers scaled by ``2**-k``, and mapped back, so the
output carries no information about the input's low bits beyond the lattice rounding that
its privacy map accounts for. Randomness comes from OpenSSL's CSPRNG (``RAND_bytes``; the
PyPI wheel links OpenSSL statically), never from Python's ``random`` or numpy.

Only OpenDP's ``contrib`` feature is enabled (at import). ``floating-point`` and
``honest-but-curious`` would unlock mechanisms whose proofs assume ideal reals, so they stay
off; a unit test checks that.

The lattice. ``k = -52`` keeps OpenDP fast (at its default, the subnormal lattice 2**-1074,
each call does big-integer arithmetic and is ~3-5x slower) at the price that rounding two
neighbouring inputs to the lattice can move them apart by up to ``2**k`` per coordinate.
OpenDP's privacy map charges that (``get_rounding_distance``: ``n * 2**k`` in L1,
``sqrt(n) * 2**k`` in L2); ``charged_sensitivity`` adds the same slack (rounded up) so that
calibration and the ledger are never below what OpenDP proves.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

import opendp.prelude as dp
from opendp.mod import OpenDPException

from hush.privacy import accounting, calibration, kinds

dp.enable_features("contrib")

LATTICE_EXPONENT = -52
# >= 2**-52 - 2**-1074 (the rounding distance per coordinate that OpenDP charges), short to
# keep recorded sensitivities readable.
LATTICE_SLACK_PER_COORDINATE = Decimal("2.3E-16")
# OpenDP measurements over real vectors are built per vector length; answers have few shapes.
_MEASUREMENTS_PER_SAMPLER = 64
_INT64 = (-(2**63), 2**63 - 1)


class SamplerError(RuntimeError):
    """The noise library failed; the caller must suppress the field (fail closed)."""


class Sampler(Protocol):
    """Adds one mechanism's noise, at one scale, to whole answers.

    The sidecar's tests inject a deterministic fake through this protocol; production uses
    ``build``.
    """

    @property
    def mechanism(self) -> kinds.Mechanism: ...

    @property
    def scale(self) -> float: ...

    @property
    def integer(self) -> bool: ...

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        """Noisy copies of ``values`` (ints for integer samplers, floats otherwise)."""
        ...


class _OpenDPSampler:
    """A Sampler backed by cached OpenDP measurements; thread-safe."""

    def __init__(self, mechanism: kinds.Mechanism, scale: float, integer: bool) -> None:
        self._mechanism: kinds.Mechanism = mechanism
        self._scale = scale
        self._integer = integer
        self._lock = threading.Lock()
        self._by_length: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._integer_measurement: Any = None
        if integer:
            self._integer_measurement = self._make(None)

    @property
    def mechanism(self) -> kinds.Mechanism:
        return self._mechanism

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def integer(self) -> bool:
        return self._integer

    def __repr__(self) -> str:
        kind = "integer" if self._integer else "real"
        return f"<Sampler {self._mechanism} scale={self._scale!r} {kind}>"

    def _make(self, length: int | None) -> Any:
        gaussian = kinds.is_gaussian(self._mechanism)
        make = dp.m.make_gaussian if gaussian else dp.m.make_laplace
        distance = dp.l2_distance if gaussian else dp.l1_distance
        try:
            if self._integer:
                domain = dp.vector_domain(dp.atom_domain(T="i64"))
                return make(domain, distance(T="i64"), scale=self._scale)
            domain = dp.vector_domain(dp.atom_domain(T="f64", nan=False), size=length)
            return make(domain, distance(T="f64"), scale=self._scale, k=LATTICE_EXPONENT)
        except (OpenDPException, TypeError, ValueError) as error:
            raise SamplerError(f"could not build the {self._mechanism} sampler: {error}") from error

    def _measurement(self, length: int) -> Any:
        if self._integer:
            return self._integer_measurement
        with self._lock:
            measurement = self._by_length.get(length)
            if measurement is not None:
                self._by_length.move_to_end(length)
                return measurement
        measurement = self._make(length)
        with self._lock:
            self._by_length[length] = measurement
            while len(self._by_length) > _MEASUREMENTS_PER_SAMPLER:
                self._by_length.popitem(last=False)
        return measurement

    def release(self, values: Sequence[float | int]) -> list[float | int]:
        inputs = integer_inputs(values) if self._integer else real_inputs(values)
        if not inputs:
            return []
        measurement = self._measurement(len(inputs))
        try:
            noisy = measurement(inputs)
        except (OpenDPException, TypeError, ValueError, OverflowError) as error:
            raise SamplerError(f"the {self._mechanism} sampler failed: {error}") from error
        return _checked(noisy, len(inputs), integer=self._integer)


def integer_inputs(values: Sequence[float | int]) -> list[int]:
    """``values`` checked for an integer sampler: ints (not bools) that fit in 64 bits."""
    result: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"a discrete mechanism noises integers, got {type(value).__name__}; round the "
                "answer first or use a continuous mechanism"
            )
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError("an integer answer must fit in 64 bits")
        result.append(value)
    return result


def real_inputs(values: Sequence[float | int]) -> list[float]:
    """``values`` checked for a real sampler, as floats: numbers (not bools), finite."""
    result: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"a mechanism noises numbers, got {type(value).__name__}")
        real = float(value)
        if not math.isfinite(real):
            raise ValueError("an answer to noise must be finite; clamp it to its bounds first")
        result.append(real)
    return result


def _checked(noisy: Any, length: int, *, integer: bool) -> list[float | int]:
    if not isinstance(noisy, list) or len(noisy) != length:
        raise SamplerError("the sampler returned a result of the wrong shape")
    result: list[float | int] = []
    for value in noisy:
        if integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise SamplerError("the integer sampler returned a non-integer")
        elif not isinstance(value, float) or not math.isfinite(value):
            raise SamplerError("the sampler returned a non-finite value")
        result.append(value)
    return result


@functools.lru_cache(maxsize=256)
def _cached_sampler(mechanism: kinds.Mechanism, scale: float, integer: bool) -> Sampler:
    return _OpenDPSampler(mechanism, scale, integer)


def build(mechanism: str, scale: float, *, integer: bool) -> Sampler:
    """The (cached) sampler adding ``mechanism`` noise of ``scale`` (Laplace b, Gaussian sigma).

    ``integer`` must match the mechanism: the discrete kinds noise integer answers (counts)
    and return integers; ``laplace`` and ``gaussian`` noise reals and return floats.
    """
    parsed = kinds.parse(mechanism)
    if integer != kinds.is_discrete(parsed):
        wanted = "discreteLaplace or discreteGaussian" if integer else "laplace or gaussian"
        raise ValueError(f"{'integer' if integer else 'real'} answers need {wanted}, not {parsed}")
    if isinstance(scale, bool) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"a noise scale must be a positive finite number, got {scale!r}")
    return _cached_sampler(parsed, float(scale), integer)


def charged_sensitivity(mechanism: str, sensitivity: Decimal, *, length: int) -> Decimal:
    """The sensitivity to calibrate and charge for: the declared one plus lattice slack.

    Zero slack for the discrete kinds (integers are on the lattice). ``length`` is the
    number of values noised together in one answer.
    """
    parsed = kinds.parse(mechanism)
    if length < 0:
        raise ValueError("an answer cannot have a negative length")
    if kinds.is_discrete(parsed) or length == 0:
        return sensitivity
    if kinds.norm(parsed) == "L1":
        coordinates = Decimal(length)
    else:
        # sqrt(length) rounded up to 6 decimals, exactly.
        scaled = math.isqrt(length * 10**12)
        if scaled * scaled < length * 10**12:
            scaled += 1
        coordinates = Decimal(scaled).scaleb(-6)
    return sensitivity + coordinates * LATTICE_SLACK_PER_COORDINATE


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """How one answer of a route field is noised, and what the ledger is charged for it."""

    sampler: Sampler
    release: accounting.Release
    length: int


@functools.lru_cache(maxsize=1024)
def plan(
    mechanism: str, *, sensitivity: Decimal, epsilon: Decimal, delta: Decimal, length: int
) -> Plan:
    """Calibrate, build the sampler and describe the release, for answers of ``length`` values.

    The one call a sidecar needs per route field and answer shape (cached): the scale comes
    from the charged sensitivity, the sampler uses that float scale, and the release records
    the decimal ``calibration.recorded_scale`` of it (never above the float used).
    """
    parsed = kinds.parse(mechanism)
    charged = charged_sensitivity(parsed, sensitivity, length=length)
    scale = calibration.scale(parsed, sensitivity=charged, epsilon=epsilon, delta=delta)
    return Plan(
        sampler=build(parsed, scale, integer=kinds.is_discrete(parsed)),
        release=accounting.Release(
            mechanism=parsed,
            epsilon=epsilon,
            delta=delta,
            sensitivity=charged,
            scale=calibration.recorded_scale(scale),
        ),
        length=length,
    )
