#!/usr/bin/env bash
# `make demo`: the Hush story on the local cluster, told by `hush dev demo`
# (operator/hush/dev/demo.py): `hush dev up` installs all of Hush (CRDs, the operator as a
# host process, its webhooks and admission policies), then a budget with two team quotas,
# policies, a refused and an injected Deployment, queries through the pods' sidecars until
# the budget is exhausted, the ledger, and a policy change that rolls the workload.
# The cluster stays up afterwards: `hush dev down --name <cluster>` (or make cluster-down).
set -euo pipefail
cluster="${1:-hush-dev}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
exec "$repo/.venv/bin/hush" dev demo --name "$cluster"
