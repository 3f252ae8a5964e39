"""From a ``PrivacyBudget`` spec to the limits a ``Book`` enforces, in accountant units.

Capacities round down (``Accountant.capacity``), so a budget of 1.0 never admits
1.0000000000000002 worth of charges.
"""

from __future__ import annotations

import decimal

from hush.api import privacybudget
from hush.ledger import book
from hush.privacy import accounting, amounts


def limits_for(spec: privacybudget.PrivacyBudgetSpec) -> book.Limits:
    accountant = accounting.accountant(spec.accounting)
    delta = amounts.exact(spec.delta)
    return book.Limits(
        accountant=accountant,
        total=accountant.capacity(amounts.exact(spec.epsilon), delta),
        delta=delta,
        teams={
            quota.team: accountant.capacity(amounts.exact(quota.epsilon), team_delta(spec, quota))
            for quota in spec.quotas
        },
        team_deltas={quota.team: team_delta(spec, quota) for quota in spec.quotas},
        team_epsilons={quota.team: amounts.exact(quota.epsilon) for quota in spec.quotas},
        enforcement=spec.enforcement,
    )


def team_delta(
    spec: privacybudget.PrivacyBudgetSpec, quota: privacybudget.TeamQuota
) -> decimal.Decimal:
    """The delta at which a team's spending converts to epsilon."""
    # zcdp and rdp convert a team's spending to epsilon at some delta: the team's own delta
    # when it has one, else the dataset's (a team without a delta share would otherwise
    # have no usable capacity at all under those modes).
    if spec.accounting != "pure" and quota.delta == 0:
        return amounts.exact(spec.delta)
    return amounts.exact(quota.delta)
