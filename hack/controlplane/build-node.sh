#!/usr/bin/env bash
# Builds the node binaries of a real node (kubelet, kube-proxy) from the same pinned
# Kubernetes release as the control plane (hack/controlplane/kubernetes).
#
# Why a second script and a second module file: the pin is one (node.mod has go.mod's
# require and replace lines plus the two node tools, and tests/unit/test_dev_real_node.py
# fails when they differ), but kubelet and kube-proxy need modules the control plane does
# not (netlink, knftables, ...), so their checksums live in node.sum. Keeping them out of
# go.mod/go.sum keeps build.sh's cache key, and so every existing control plane cache,
# unchanged; the node binaries are only built for `hush dev up --real-node`.
#
# Same settings as build.sh: CGO off, -trimpath, GOTOOLCHAIN=local, the Kubernetes build
# tags and version ldflags, GOCACHE/GOMODCACHE shared with build.sh (so a machine that built
# the control plane compiles only what the node adds). The binaries land in
# ${HUSH_CACHE_DIR:-~/.cache/hush}/node/<key>/bin, key = go version + this script + node.mod
# + node.sum; a warm run is a hash and a stat. The last line of output is the bin directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${HUSH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hush}"
module="$here/kubernetes"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false"
export GOCACHE="$cache_root/go/build" GOMODCACHE="$cache_root/go/mod"

key="$( { go version; cat "$here/build-node.sh" "$module/node.mod" "$module/node.sum"; } \
  | sha256sum | cut -c1-16)"
bin_dir="$cache_root/node/$key/bin"
if [[ -f "$bin_dir/.complete" ]]; then
  echo "Node binaries are up to date"
  echo "$bin_dir"
  exit 0
fi
mkdir -p "$bin_dir"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

total_started=$SECONDS
(cd "$module" && go mod download -modfile=node.mod)
kube_version="$(cd "$module" && go list -modfile=node.mod -m -f '{{.Version}}' k8s.io/kubernetes)"
kube_minor="$(echo "$kube_version" | cut -d. -f2)"
# The same version ldflags as build.sh: the kubelet reports its version in the Node status.
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1"
  version_flags+=" -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
  version_flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

for cmd in kubelet kube-proxy; do
  started=$SECONDS
  log "Building $cmd from k8s.io/kubernetes/cmd/$cmd $kube_version"
  # A process of its own per output name: a concurrent build of the same key never
  # leaves a half-written binary under the final name.
  (cd "$module" && go build -modfile=node.mod -tags selinux,notest \
    -ldflags "-s -w$version_flags" -o "$bin_dir/$cmd.tmp.$$" "k8s.io/kubernetes/cmd/$cmd")
  mv "$bin_dir/$cmd.tmp.$$" "$bin_dir/$cmd"
  log "Built $cmd in $((SECONDS - started))s"
done

touch "$bin_dir/.complete"
log "Built the node binaries in $((SECONDS - total_started))s"
echo "$bin_dir"
