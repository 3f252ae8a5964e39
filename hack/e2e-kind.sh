#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite against a kind cluster running the Hush image built from this
# checkout and installed with the chart. For users' CI and anyone with Docker and kind; it
# cannot run where there is no Docker (the project's own `make e2e` uses the local control
# plane instead). Steps:
#
#   1. the kind cluster $KIND_CLUSTER (default hush-e2e), created unless it exists;
#      $KIND_NODE_IMAGE picks the node image (pin it by digest for repeatable runs)
#   2. docker build, tagged hush-e2e:<the first 12 hex digits of the image ID>
#   3. kind load docker-image into the cluster's nodes
#   4. the accountant's serving certificate (a self-signed one, made with openssl) unless its
#      Secret exists, then helm upgrade --install of charts/hush with that image and
#      hack/e2e-kind-values.yaml into $HUSH_E2E_NAMESPACE (default hush-system), waiting
#      for the rollout
#   5. pytest e2e/test_release.py: the installed release serves (HUSH_E2E_RELEASE)
#   6. helm uninstall (the CRDs stay): the suite starts its own operators and registers its
#      own webhooks, which an installed release would answer in their place
#   7. pytest e2e with HUSH_KUBECONFIG: the same suite as `make e2e`
#
# The image is referenced by tag: `kind load` gives the nodes no registry digest they can
# resolve (kubernetes-sigs/kind#2394, #2734), and the chart injects sidecars by digest only,
# so the release runs with sidecar injection off (hack/e2e-kind-values.yaml). The cluster
# is left running; KIND_DELETE=1 deletes it at the end. Extra pytest arguments: $PYTEST_FLAGS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

cluster="${KIND_CLUSTER:-hush-e2e}"
namespace="${HUSH_E2E_NAMESPACE:-hush-system}"
release="${HUSH_E2E_RELEASE_NAME:-hush}"
pytest="${PYTEST:-$root/.venv/bin/pytest}"
state="${HUSH_E2E_KIND_DIR:-$root/.venv/e2e-kind}"
kubeconfig="$state/kubeconfig"
read -r -a pytest_flags <<<"${PYTEST_FLAGS:-}"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

for tool in docker kind helm kubectl openssl; do
  if ! command -v "$tool" >/dev/null; then
    echo "make e2e-kind needs $tool on PATH (docs/e2e-kind.md lists versions)" >&2
    exit 1
  fi
done
mkdir -p "$state"

# 1. The cluster.
# Output captured first: with pipefail, `kind ... | grep -q` can fail with SIGPIPE (141)
# when grep exits early.
clusters="$(kind get clusters)"
if ! grep -qx "$cluster" <<<"$clusters"; then
  log "Creating kind cluster $cluster"
  node_image=()
  if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then node_image=(--image "$KIND_NODE_IMAGE"); fi
  kind create cluster --name "$cluster" --wait 120s ${node_image[@]+"${node_image[@]}"}
fi
kind get kubeconfig --name "$cluster" >"$kubeconfig"
export KUBECONFIG="$kubeconfig"

# 2. The image.
log "Building the image"
docker build --iidfile "$state/image-id" \
  --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" .
image_id="$(cat "$state/image-id")"
tag="${image_id#sha256:}"
tag="${tag:0:12}"
image="hush-e2e:$tag"
docker tag "$image_id" "$image"

# 3. Into the nodes.
log "Loading $image into $cluster"
kind load docker-image "$image" --name "$cluster"

# 4. The release.
namespace_manifest="$(kubectl create namespace "$namespace" --dry-run=client -o yaml)"
kubectl apply -f - <<<"$namespace_manifest"
secret="$release-accountant-tls"
[[ "$release" == *hush* ]] || secret="$release-hush-accountant-tls"
service="${secret%-tls}"
if ! kubectl --namespace "$namespace" get secret "$secret" >/dev/null 2>&1; then
  log "Creating the accountant's serving certificate ($secret)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=$service.$namespace.svc" \
    -addext "subjectAltName=DNS:$service.$namespace.svc,DNS:$service.$namespace.svc.cluster.local" \
    -keyout "$state/accountant.key" -out "$state/accountant.crt" 2>/dev/null
  # Self-signed, so the certificate is its own CA (ca.crt, for --sidecar-ca-file).
  kubectl --namespace "$namespace" create secret generic "$secret" --type kubernetes.io/tls \
    --from-file tls.crt="$state/accountant.crt" --from-file tls.key="$state/accountant.key" \
    --from-file ca.crt="$state/accountant.crt"
fi
log "Installing the chart with $image"
helm upgrade --install "$release" charts/hush --namespace "$namespace" \
  --values hack/e2e-kind-values.yaml \
  --set image.repository=hush-e2e --set image.tag="$tag" \
  --set accountant.tlsSecretName="$secret" \
  --wait --timeout 5m

# 5. The release serves; 6. out of the way; 7. the suite.
status=0
HUSH_KUBECONFIG="$kubeconfig" HUSH_E2E_RELEASE="$namespace/$release" \
  HUSH_E2E_IMAGE="$image" "$pytest" e2e/test_release.py ${pytest_flags[@]+"${pytest_flags[@]}"} || status=$?
if [[ $status -ne 0 ]]; then
  kubectl --namespace "$namespace" get pods,events -o wide >&2 || true
  kubectl --namespace "$namespace" logs --selector app.kubernetes.io/name=hush \
    --all-containers --prefix --tail 200 >&2 || true
fi
log "Uninstalling the release (the CRDs stay)"
helm uninstall "$release" --namespace "$namespace" --wait --timeout 5m
if [[ $status -eq 0 ]]; then
  HUSH_KUBECONFIG="$kubeconfig" "$pytest" e2e ${pytest_flags[@]+"${pytest_flags[@]}"} || status=$?
fi

if [[ "${KIND_DELETE:-0}" == 1 ]]; then
  kind delete cluster --name "$cluster"
fi
exit "$status"
