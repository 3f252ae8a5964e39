#!/usr/bin/env bash
# `make chart-check`: helm lint --strict and helm template of charts/hush over the value sets
# that matter (defaults, two replicas, cert-manager certificates, no injection, what
# `make e2e-kind` installs), plus the one the chart must refuse (injection without a digest).
# No cluster needed. helm is $HELM, else helm on PATH, else the one `make controlplane`
# builds; the Kubernetes version is the control plane's pin (hack/controlplane/kubernetes).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

helm="${HELM:-}"
if [[ -z "$helm" ]]; then
  helm="$(command -v helm || true)"
fi
if [[ -z "$helm" ]]; then
  helm="$(hack/controlplane/build.sh | tail -n 1)/helm"
fi
kube_version="$(sed -n 's/^[[:space:]]*k8s\.io\/kubernetes v\([0-9.]*\).*/\1/p' \
  hack/controlplane/kubernetes/go.mod | head -n 1)"
digest="sha256:$(printf '0%.0s' {1..64})"
common=(--namespace hush-system --kube-version "$kube_version")

echo "helm lint (Kubernetes $kube_version)"
"$helm" lint --strict charts/hush "${common[@]}" --set image.digest="$digest"

render() {  # render <description> <helm template arguments...>
  local description="$1"
  shift
  echo "helm template: $description"
  "$helm" template hush charts/hush "${common[@]}" --api-versions monitoring.coreos.com/v1 \
    "$@" >/dev/null
}
render "defaults" --set image.digest="$digest"
render "two replicas" --set image.digest="$digest" --set operator.replicas=2
render "cert-manager certificates" --set image.digest="$digest" \
  --set webhook.certificates.mode=cert-manager
render "no sidecar injection, image by tag" --set webhook.injection.enabled=false \
  --set image.tag=0.1.0
render "what make e2e-kind installs" --values hack/e2e-kind-values.yaml \
  --set image.repository=hush-e2e --set image.tag=0123456789ab

echo "helm template: injection without image.digest must be refused"
if "$helm" template hush charts/hush "${common[@]}" >/dev/null 2>&1; then
  echo "The chart rendered sidecar injection without image.digest" >&2
  exit 1
fi
echo "Chart checks passed"
