#!/usr/bin/env bash
# `make demo`: bring up the local control plane, install Hush with Helm, run the operator
# under the chart's own ServiceAccount (which proves the chart's RBAC suffices), declare a
# budget and a policy, and show what Hush makes of them. The cluster stays up afterwards.
set -euo pipefail
cluster="${1:-hush-dev}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
hush="$repo/.venv/bin/hush"
bin_dir="$("$repo/hack/controlplane/build.sh" | tail -n 1)"
kubectl() { "$bin_dir/kubectl" --kubeconfig "$kubeconfig" "$@"; }
helm() { "$bin_dir/helm" --kubeconfig "$kubeconfig" "$@"; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Starting the local control plane ($cluster)"
kubeconfig="$("$hush" dev up --name "$cluster" | tail -n 1)"
kubectl get nodes

step "Installing Hush with Helm into hush-system"
helm upgrade --install hush "$repo/charts/hush" --namespace hush-system --create-namespace \
  --set accountant.enabled=false --wait --timeout 2m
kubectl -n hush-system get deployment,serviceaccount -l app.kubernetes.io/instance=hush

step "Running the operator on this host as the chart's ServiceAccount"
# Pods do not really run on kwok nodes, so the operator runs here, with the token of the
# ServiceAccount the chart created: anything the chart's RBAC forgot would fail loudly.
state_dir="$(dirname "$kubeconfig")"
token="$(kubectl -n hush-system create token hush --duration=2h)"
operator_kubeconfig="$state_dir/operator-kubeconfig"
cp "$kubeconfig" "$operator_kubeconfig"
user="$("$bin_dir/kubectl" --kubeconfig "$operator_kubeconfig" config view -o jsonpath='{.contexts[0].context.user}')"
"$bin_dir/kubectl" --kubeconfig "$operator_kubeconfig" config unset "users.$user" >/dev/null
"$bin_dir/kubectl" --kubeconfig "$operator_kubeconfig" config set-credentials "$user" \
  --token="$token" >/dev/null
operator_log="$state_dir/logs/demo-operator.log"
KUBECONFIG="$operator_kubeconfig" "$repo/.venv/bin/python" -m hush operator --all-namespaces \
  >"$operator_log" 2>&1 &
operator_pid=$!
trap 'kill "$operator_pid" 2>/dev/null || true; wait "$operator_pid" 2>/dev/null || true' EXIT

step "Declaring a DPPolicy before its PrivacyBudget exists"
kubectl create namespace hush-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n hush-demo delete dppolicies,privacybudgets --all --wait >/dev/null
kubectl -n hush-demo apply -f "$repo/samples/valid/dppolicy-census-stats.yaml"
kubectl -n hush-demo wait dppolicy/census-stats --for=jsonpath='{.status.conditions[0].reason}'=BudgetNotFound --timeout=60s
kubectl -n hush-demo get dppolicy census-stats \
  -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'

step "Declaring the PrivacyBudget: the policy becomes Ready"
kubectl -n hush-demo apply -f "$repo/samples/valid/privacybudget-census.yaml"
kubectl -n hush-demo wait dppolicy/census-stats --for=condition=Ready --timeout=60s
kubectl -n hush-demo wait privacybudget/census-2020 --for=condition=Ready --timeout=60s
kubectl -n hush-demo get privacybudgets,dppolicies -o wide

step "The apiserver itself refuses a nonsensical budget"
kubectl -n hush-demo apply -f "$repo/samples/invalid/privacybudget-quotas-exceed-total.yaml" \
  && { echo "expected a refusal" >&2; exit 1; } || true

step "Done"
echo "The cluster is still running. Try:"
echo "  export KUBECONFIG=$kubeconfig"
echo "  kubectl get privacybudgets,dppolicies -A    (kubectl: $bin_dir/kubectl)"
echo "Stop it with: make cluster-down"
