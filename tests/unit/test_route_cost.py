"""The cost of a route, from the policy alone: lengths, sensitivities, the one charge, and
the thresholds of partition selection (checked against closed forms)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import hypothesis
import pytest
import scipy.stats
from hypothesis import strategies

from hush.api import dppolicy
from hush.privacy import accounting, kinds, mechanisms, route_cost
from tests.policies import route


def _field(**raw: Any) -> dppolicy.Field:
    return dppolicy.Field.model_validate(raw)


# -- lengths ---------------------------------------------------------------------------------


def test_lengths_are_the_product_of_the_declared_domains() -> None:
    the_route = route(
        delta=1e-6,
        fields=[
            {"path": "$.total", "kind": "count"},
            {"path": "$.bins.*", "kind": "histogram"},
            {"path": "$.days[*].regions.*.n", "kind": "count"},
            {"path": "$.groups[*].n", "kind": "count"},
            {"path": "$.open.*.n", "kind": "count"},
        ],
        domains=[
            {"path": "$.bins.*", "keys": ["a", "b", "c"]},
            {"path": "$.days[*]", "length": 7},
            {"path": "$.days[*].regions.*", "keys": ["north", "south"]},
            {"path": "$.groups[*]", "keyField": "name", "keys": ["x", "y", "z", "w"]},
            {
                "path": "$.open.*",
                "partitionSelection": {"maxPartitionsContributed": 3, "maxKeys": 50},
            },
        ],
    )
    assert route_cost.field_lengths(the_route) == (1, 3, 14, 4, 50)
    # What one individual can move: all declared values, but only 3 selected keys.
    assert route_cost.sensitivity_lengths(the_route) == (1, 3, 14, 4, 3)


def test_a_wildcard_without_a_domain_has_no_length() -> None:
    the_route = route(fields=[{"path": "$.r.*", "kind": "count"}])
    with pytest.raises(route_cost.RouteError, match=r"\$\.r\.\* .*no domain") as refused:
        route_cost.field_lengths(the_route)
    assert refused.value.reason == "DomainMissing"
    with pytest.raises(route_cost.RouteError):
        route_cost.route_charge(the_route)


# -- sensitivities -------------------------------------------------------------------------


def test_histogram_bins_are_one_release_of_the_per_value_sensitivity() -> None:
    field = _field(path="$.h.*", kind="histogram", contributionsPerIndividual=3)
    assert route_cost.vector_sensitivity(field, "laplace", 50) == 3
    assert route_cost.vector_sensitivity(field, "gaussian", 50) == 3


def test_overlapping_counts_add_up_in_l1_and_in_quadrature_in_l2() -> None:
    field = _field(path="$.r[*].n", kind="count")
    assert route_cost.vector_sensitivity(field, "laplace", 4) == 4
    assert route_cost.vector_sensitivity(field, "gaussian", 4) == 2
    assert route_cost.vector_sensitivity(field, "gaussian", 2) == Decimal("1.414214")


def test_sums_use_bounds_and_an_explicit_sensitivity_only_raises() -> None:
    field = _field(path="$.s", kind="sum", bounds={"lower": -2, "upper": 5})
    assert route_cost.vector_sensitivity(field, "laplace", 1) == 5
    raised = _field(path="$.s", kind="sum", bounds={"lower": 0, "upper": 5}, sensitivity=7)
    assert route_cost.vector_sensitivity(raised, "laplace", 1) == 7


def test_a_means_noised_sums_have_the_sum_sensitivity_plus_rounding_for_discrete_kinds() -> None:
    mean = _field(
        path="$.r[*].avg",
        kind="mean",
        bounds={"lower": -2, "upper": 5},
        countPath="$.r[*].n",
        contributionsPerIndividual=2,
    )
    assert route_cost.vector_sensitivity(mean, "laplace", 1) == 10
    assert route_cost.vector_sensitivity(mean, "laplace", 3) == 30
    assert route_cost.vector_sensitivity(mean, "gaussian", 4) == 20
    assert route_cost.vector_sensitivity(mean, "discreteLaplace", 1) == 11
    assert route_cost.vector_sensitivity(mean, "discreteGaussian", 4) == 22


def test_quantiles_are_refused_with_the_alternative() -> None:
    field = {"path": "$.m", "kind": "quantile", "quantile": 0.5, "bounds": {"lower": 0, "upper": 1}}
    the_route = route(fields=[{"path": "$.count", "kind": "count"}, field])
    with pytest.raises(route_cost.RouteError, match="histogram") as refused:
        route_cost.route_plan(the_route)
    assert refused.value.reason == "QuantileUnsupported"


# -- the charge ------------------------------------------------------------------------------


def test_a_single_field_route_charges_its_plan_unchanged() -> None:
    expected = mechanisms.plan(
        "laplace", sensitivity=Decimal(1), epsilon=Decimal("0.5"), delta=Decimal(0), length=1
    )
    assert route_cost.route_charge(route()) == expected.release
    assert route_cost.route_plan(route()).fields[0].plan == expected


def test_reference_charge_of_three_fixed_keys() -> None:
    """A count over 3 declared keys, Laplace, epsilon 0.5: L1 sensitivity 3, b = 6 (+ slack)."""
    the_route = route(
        fields=[{"path": "$.r.*", "kind": "count"}],
        domains=[{"path": "$.r.*", "keys": ["a", "b", "c"]}],
    )
    charge = route_cost.route_charge(the_route)
    assert charge.sensitivity == Decimal(3) + 3 * mechanisms.LATTICE_SLACK_PER_COORDINATE
    # b = sensitivity / epsilon, rounded up to a float (never down).
    assert charge.sensitivity / Decimal("0.5") <= charge.scale <= Decimal("6.000000000000002")
    assert (charge.epsilon, charge.delta) == (Decimal("0.5"), Decimal(0))


def test_the_charge_does_not_depend_on_anything_but_the_policy() -> None:
    the_route = route(
        fields=[{"path": "$.g[*].n", "kind": "count"}],
        domains=[{"path": "$.g[*]", "length": 5}],
    )
    same = dppolicy.Route.model_validate(the_route.model_dump(by_alias=True))
    assert route_cost.route_charge(the_route) == route_cost.route_charge(same)
    longer = route(
        fields=[{"path": "$.g[*].n", "kind": "count"}],
        domains=[{"path": "$.g[*]", "length": 6}],
    )
    assert route_cost.route_charge(longer).sensitivity > route_cost.route_charge(same).sensitivity


def _true_loss(plan: route_cost.RoutePlan) -> Fraction:
    """The composed loss of all the noise the plan adds: sum of eps_i (L1) or mu^2 (L2)."""
    total = Fraction(0)
    mechanism = plan.mechanism
    for item in plan.fields:
        base = route_cost.vector_sensitivity(item.field, mechanism, item.sensitivity_length)
        slack = max(item.length, item.sensitivity_length)
        actual = Fraction(mechanisms.charged_sensitivity(mechanism, base, length=slack))
        scale = Fraction(item.plan.release.scale)  # recorded scale <= the float really used
        total += actual / scale if kinds.norm(mechanism) == "L1" else (actual / scale) ** 2
    return total


_FIELD_KINDS = strategies.sampled_from(["count", "sum", "histogram", "mean"])


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    mechanism=strategies.sampled_from(kinds.MECHANISMS),
    epsilon=strategies.sampled_from([0.01, 0.1, 0.5, 1.0, 3.0]),
    shapes=strategies.lists(
        strategies.tuples(
            _FIELD_KINDS,
            strategies.one_of(
                strategies.integers(1, 6).map(lambda n: {"length": n}),
                strategies.integers(1, 4).map(lambda n: {"keys": [f"k{i}" for i in range(n)]}),
                strategies.tuples(strategies.integers(1, 3), strategies.integers(1, 9)).map(
                    lambda pair: {
                        "partitionSelection": {
                            "maxPartitionsContributed": pair[0],
                            "maxKeys": pair[1],
                        }
                    }
                ),
            ),
            strategies.integers(1, 4),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_the_charged_release_is_never_under_noised(
    mechanism: kinds.Mechanism, epsilon: float, shapes: list[tuple[str, dict[str, Any], int]]
) -> None:
    selected = any("partitionSelection" in domain for _, domain, _ in shapes)
    delta = 1e-6 if kinds.is_gaussian(mechanism) or selected else 0.0
    fields: list[dict[str, Any]] = []
    domains: list[dict[str, Any]] = []
    for index, (kind, domain, contributions) in enumerate(shapes):
        prefix = f"$.f{index}[*]" if "length" in domain else f"$.f{index}.*"
        domains.append({"path": prefix, **domain})
        # Every domain gets its count (partition selection selects by it; means divide by it).
        fields.append(
            {"path": f"{prefix}.n", "kind": "count", "contributionsPerIndividual": contributions}
        )
        if kind == "count":
            continue
        field: dict[str, Any] = {
            "path": f"{prefix}.v",
            "kind": kind,
            "contributionsPerIndividual": contributions,
        }
        if kind in ("sum", "mean"):
            field["bounds"] = {"lower": 0, "upper": 3}
        if kind == "mean":
            field["countPath"] = f"{prefix}.n"
        fields.append(field)
    the_route = route(
        mechanism=mechanism, epsilon=epsilon, delta=delta, fields=fields, domains=domains
    )
    plan = route_cost.route_plan(the_route)
    charge = plan.charge
    assert charge == route_cost.route_charge(the_route)
    assert charge.mechanism == mechanism
    assert charge.epsilon == Decimal(repr(epsilon))
    assert charge.delta == Decimal(repr(delta))
    # The accountant's own check passes (it raises UnderNoisedError otherwise) ...
    accounting.PureAccountant().release_cost(charge)
    # ... and the charged release bounds the loss of all the noise that is really added.
    reported = route_cost.ratio(charge)
    if kinds.norm(mechanism) == "L1":
        assert _true_loss(plan) <= reported
    else:
        assert _true_loss(plan) <= reported**2
    # The selections spend the rest of delta, split evenly.
    spent = sum((Fraction(selection.delta) for selection in plan.selections), Fraction(0))
    assert spent <= Fraction(route_cost.threshold_delta(the_route)) <= Fraction(charge.delta)
    if selected:
        assert spent > Fraction(route_cost.threshold_delta(the_route)) * Fraction(999999, 10**6)


# -- partition selection --------------------------------------------------------------------


def _selected_route(mechanism: str, *, partitions: int, delta: float) -> dppolicy.Route:
    return route(
        mechanism=mechanism,
        epsilon=1.0,
        delta=delta,
        fields=[{"path": "$.regions.*.count", "kind": "count"}],
        domains=[
            {
                "path": "$.regions.*",
                "partitionSelection": {"maxPartitionsContributed": partitions, "maxKeys": 20},
            }
        ],
    )


def _laplace_threshold(scale: float, partitions: int, delta: float) -> int:
    """Smallest integer T with 1 - (1 - exp(-(T - 1)/b) / 2)^k <= delta (count 1, Laplace)."""
    tail = 1 - (1 - delta) ** (1 / partitions)
    return math.ceil(1 + scale * math.log(1 / (2 * tail)))


@pytest.mark.parametrize(
    ("partitions", "delta"), [(1, 1e-6), (2, 1e-6), (5, 1e-9), (1, 1e-3), (10, 1e-12)]
)
def test_laplace_thresholds_match_the_closed_form(partitions: int, delta: float) -> None:
    plan = route_cost.route_plan(_selected_route("laplace", partitions=partitions, delta=delta))
    (selection,) = plan.selections
    scale = plan.fields[0].plan.sampler.scale
    assert scale == pytest.approx(partitions / 1.0)  # L1 sensitivity k, epsilon 1
    expected = _laplace_threshold(scale, partitions, delta)
    # OpenDP's map rounds towards privacy: the same integer, or one more.
    assert selection.threshold in (expected, expected + 1)
    assert selection.delta == Decimal(repr(delta))  # Laplace noise is pure: all of delta


def test_reference_threshold_laplace() -> None:
    """b = 2 (k = 2, epsilon 1), delta 1e-6: 1 + 2 ln(1/(2 (1 - sqrt(1 - 1e-6)))) = 28.63."""
    plan = route_cost.route_plan(_selected_route("laplace", partitions=2, delta=1e-6))
    assert plan.selections[0].threshold == 29


@pytest.mark.parametrize("mechanism", ["gaussian", "discreteGaussian"])
def test_gaussian_thresholds_spend_half_of_delta_and_match_the_normal_tail(mechanism: str) -> None:
    the_route = _selected_route(mechanism, partitions=3, delta=1e-6)
    plan = route_cost.route_plan(the_route)
    (selection,) = plan.selections
    assert selection.delta == Decimal("5E-7")
    assert plan.charge.delta == Decimal("0.000001")
    sigma = plan.fields[0].plan.sampler.scale

    def delta_at(threshold: float) -> float:
        return float(1 - (1 - scipy.stats.norm.sf(threshold - 1, scale=sigma)) ** 3)

    # The continuous normal tail puts the threshold within one of OpenDP's.
    assert delta_at(selection.threshold + 1) <= 5e-7
    assert delta_at(selection.threshold - 2) > 5e-7


def test_the_noise_of_a_gaussian_route_with_selection_is_calibrated_at_half_its_delta() -> None:
    plan = route_cost.route_plan(_selected_route("gaussian", partitions=1, delta=1e-6))
    at_half = mechanisms.plan(
        "gaussian",
        sensitivity=Decimal(1),
        epsilon=Decimal(1),
        delta=Decimal("5E-7"),
        length=20,
    )
    assert plan.fields[0].plan.sampler.scale == at_half.sampler.scale


def test_an_unreachable_selection_delta_is_refused_with_the_fix() -> None:
    with pytest.raises(route_cost.RouteError, match="raise the route's delta"):
        route_cost.selection_threshold(
            "gaussian", scale=1.0, partitions=1, cap=1, delta=Decimal("1e-300")
        )


def test_a_route_declaring_too_many_values_is_refused() -> None:
    the_route = route(
        fields=[{"path": "$.a[*].b[*]", "kind": "count"}],
        domains=[{"path": "$.a[*]", "length": 1000}, {"path": "$.a[*].b[*]", "length": 101}],
    )
    with pytest.raises(route_cost.RouteError, match="more than 100000") as refused:
        route_cost.route_plan(the_route)
    assert refused.value.reason == "ReleaseTooLarge"


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ({"path": "$.r[*]", "length": 2, "keys": ["a"]}, "exactly one of"),
        ({"path": "$.r[*]", "keys": ["a", "a"], "keyField": "k"}, "twice"),
        ({"path": "$.r[*]", "keys": ["a"]}, "needs keyField"),
        ({"path": "$.r[*]", "length": 2, "keyField": "k"}, "without keyField"),
    ],
)
def test_the_apiservers_domain_rules_are_checked_again(
    domain: dict[str, Any], message: str
) -> None:
    """A policy read from a pod's baked configuration never passed through CEL."""
    the_route = route(fields=[{"path": "$.r[*].n", "kind": "count"}], domains=[domain])
    problems = route_cost.route_problems(the_route)
    assert [reason for reason, _ in problems] == ["DomainInvalid"]
    assert message in problems[0][1]
