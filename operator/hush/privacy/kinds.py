"""The four noise mechanisms by name, and the two facts about each that the math depends on.

A policy names its mechanism (``hush.api.dppolicy.Mechanism``); calibration, the samplers and
the accountant all dispatch on that name. Two properties decide everything downstream:

- the *norm* of the sensitivity: Laplace kinds are calibrated to the L1 sensitivity, Gaussian
  kinds to the L2 sensitivity;
- whether the noise lives on the integers (``discrete*``: exact discrete Laplace and discrete
  Gaussian samplers, for integer answers such as counts) or on the reals (sampled on a fine
  lattice, see ``hush.privacy.mechanisms``).

This module owns nothing else: no numbers, no sampling.
"""

from __future__ import annotations

import typing
from typing import Literal

from hush.api import dppolicy

Mechanism = dppolicy.Mechanism
Norm = Literal["L1", "L2"]

MECHANISMS: tuple[Mechanism, ...] = typing.get_args(dppolicy.Mechanism)


def parse(name: str) -> Mechanism:
    """The mechanism called ``name``; a ValueError that lists the valid names otherwise."""
    for mechanism in MECHANISMS:
        if mechanism == name:
            return mechanism
    raise ValueError(f"unknown mechanism {name!r}: use one of {', '.join(MECHANISMS)}")


def is_discrete(mechanism: Mechanism) -> bool:
    """True for the integer-valued mechanisms (noise on Z, integer answers in and out)."""
    return mechanism in ("discreteLaplace", "discreteGaussian")


def is_gaussian(mechanism: Mechanism) -> bool:
    """True for the Gaussian kinds (zCDP / Renyi native, need delta > 0 for (eps, delta))."""
    return mechanism in ("gaussian", "discreteGaussian")


def norm(mechanism: Mechanism) -> Norm:
    """The norm the sensitivity of ``mechanism`` is measured in."""
    return "L2" if is_gaussian(mechanism) else "L1"
