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
# The accountant's serving certificate (in a cluster: a Secret made by cert-manager).
"$repo/.venv/bin/python" -c '
import datetime, sys
from pathlib import Path
from hush.dev import pki
out = Path(sys.argv[1])
pki.write_loopback_serving_files(out / "accountant.crt", out / "accountant.key",
    common_name="hush-accountant", now=datetime.datetime.now(datetime.UTC))
' "$state_dir"
accountant_port="$("$repo/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KUBECONFIG="$operator_kubeconfig" "$repo/.venv/bin/python" -m hush operator --all-namespaces \
  --log-format text --accountant-port "$accountant_port" --accountant-host 127.0.0.1 \
  --accountant-tls-cert "$state_dir/accountant.crt" --accountant-tls-key "$state_dir/accountant.key" \
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

step "Charging the budget as a sidecar would: pod-bound token, reserve-before-release"
kubectl -n hush-demo create serviceaccount census-app --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n hush-demo apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: census-app
  annotations: {hush.dev/policy: census-stats}
spec:
  serviceAccountName: census-app
  containers: [{name: app, image: registry.example/census-app:1}]
YAML
pod_token="$(kubectl -n hush-demo create token census-app --audience hush-accountant \
  --bound-object-kind Pod --bound-object-name census-app --duration 1h)"
for n in 1 2 3; do
  curl -sS --cacert "$state_dir/accountant.crt" -H "Authorization: Bearer $pod_token" \
    -H 'Content-Type: application/json' "https://127.0.0.1:$accountant_port/v1/charge" \
    -d "{\"requestId\": \"demo-$n\", \"policy\": \"census-stats\",
         \"route\": \"/stats/{region}/population\", \"mechanism\": \"discreteLaplace\",
         \"epsilon\": \"0.1\", \"delta\": \"0\", \"sensitivity\": \"1\", \"scale\": \"10\"}"
  echo
done
kubectl -n hush-demo get privacybudgets
KUBECONFIG="$kubeconfig" "$hush" ledger show census-2020 -n hush-demo
KUBECONFIG="$kubeconfig" "$hush" ledger verify census-2020 -n hush-demo

step "The apiserver itself refuses a nonsensical budget"
kubectl -n hush-demo apply -f "$repo/samples/invalid/privacybudget-quotas-exceed-total.yaml" \
  && { echo "expected a refusal" >&2; exit 1; } || true

step "Done"
echo "The cluster is still running. Try:"
echo "  export KUBECONFIG=$kubeconfig"
echo "  kubectl get privacybudgets,dppolicies -A    (kubectl: $bin_dir/kubectl)"
echo "Stop it with: make cluster-down"
