#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm) from the pinned Go modules beside this script.
#
# Why from source: this project's machines have no Docker and cannot download release
# binaries, but they do reach the Go module proxy. Each tool has its own go.mod so that
# minimal version selection never mixes, say, helm's newer client-go into the apiserver.
#
# The binaries, GOCACHE and GOMODCACHE live outside the repository, in
# ${HUSH_CACHE_DIR:-~/.cache/hush}, under a key derived from every go.mod/go.sum, this
# script and the Go version: the build runs again only when a pin changes, and a warm run
# is a hash and a stat. The last line of output is the bin directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${HUSH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hush}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false"
export GOCACHE="$cache_root/go/build" GOMODCACHE="$cache_root/go/mod"

key="$( { go version; cat "$here/build.sh"; for f in "$here"/*/go.mod "$here"/*/go.sum; do
  echo "${f#"$here"/}"; cat "$f"; done; } | sha256sum | cut -c1-16)"
bin_dir="$cache_root/controlplane/$key/bin"
if [[ -f "$bin_dir/.complete" ]]; then
  echo "Control plane binaries are up to date"
  echo "$bin_dir"
  exit 0
fi
mkdir -p "$bin_dir"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
module_version() { (cd "$here/$1" && go list -m -f '{{.Version}}' "$2"); }
module_dir() { (cd "$here/$1" && go list -m -f '{{.Dir}}' "$2"); }

build() {  # build <module-dir> <package> <output-name> [extra go build args...]
  local module="$1" package="$2" output="$3"; shift 3
  local started=$SECONDS
  log "Building $output from $package"
  (cd "$here/$module" && go build "$@" -o "$bin_dir/$output.tmp" "$package")
  mv "$bin_dir/$output.tmp" "$bin_dir/$output"
  log "Built $output in $((SECONDS - started))s"
}

total_started=$SECONDS
(cd "$here/kubernetes" && go mod download)

kube_version="$(module_version kubernetes k8s.io/kubernetes)"
kube_minor="$(echo "$kube_version" | cut -d. -f2)"
# Without these, /version reports v0.0.0-master+$Format:%H$ and semver checks (helm's
# kubeVersion, client version skew warnings) fail.
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1"
  version_flags+=" -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
  version_flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
kube_flags=(-tags selinux,notest -ldflags "-s -w$version_flags")

build etcd go.etcd.io/etcd/server/v3 etcd -ldflags "-s -w"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  build kubernetes "k8s.io/kubernetes/cmd/$cmd" "$cmd" "${kube_flags[@]}"
done
build kwok sigs.k8s.io/kwok/cmd/kwok kwok -ldflags "-s -w"
build helm helm.sh/helm/v3/cmd/helm helm \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$(module_version helm helm.sh/helm/v3)"

# kwok >= 0.8 ships no default stages ("no stages found"): assemble the standard node and
# pod lifecycle stages from the kwok module itself rather than copying them into this repo.
stage_root="$(module_dir kwok sigs.k8s.io/kwok)/kustomize/stage"
stages="$cache_root/controlplane/$key/kwok-stages.yaml"
: >"$stages.tmp"
for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
  pod/general/pod-create pod/general/pod-init-container-running \
  pod/general/pod-init-container-completed pod/general/pod-ready \
  pod/general/pod-complete pod/general/pod-delete; do
  { echo "---"; cat "$stage_root/$stage.yaml"; } >>"$stages.tmp"
done
mv "$stages.tmp" "$stages"

touch "$bin_dir/.complete"
log "Built the control plane in $((SECONDS - total_started))s"
echo "$bin_dir"
