"""The kopf resource selectors of Hush's custom resources, named once."""

from __future__ import annotations

from hush.api import common, crds

PRIVACY_BUDGETS = (common.API_GROUP, common.API_VERSION, crds.PRIVACY_BUDGET.plural)
DP_POLICIES = (common.API_GROUP, common.API_VERSION, crds.DP_POLICY.plural)
