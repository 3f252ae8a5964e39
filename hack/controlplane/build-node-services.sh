#!/usr/bin/env bash
# Builds the cluster services of a real node from pinned Go modules: CoreDNS (the cluster's
# DNS, run as a pod from an image made by hush.dev.oci_image) and kube-router (only its
# NetworkPolicy firewall, run as a host process of the node). Only `hush dev up --real-node`
# builds them (operator/hush/dev/cluster_dns.py, operator/hush/dev/network_policy.py).
#
# Why the module files are named <tool>.mod/<tool>.sum and not go.mod/go.sum: build.sh's
# cache key hashes every hack/controlplane/*/go.mod and go.sum, so a go.mod here would change
# the control plane's key and rebuild (and recreate) every existing cluster. This script
# copies them, with CoreDNS's main.go, into a work directory under the cache and builds
# there. To move a pin: edit the version in <tool>.mod, then, in a copy named go.mod,
# `go mod tidy` (CoreDNS) or `go get <module>@<version>` (kube-router), and copy both back.
#
# CoreDNS is built from hack/controlplane/coredns/main.go: the plugins its Corefile needs and
# no others (no "forward": the binary has no way to reach an upstream resolver).
#
# Same settings as build.sh: CGO off (static binaries, which the one-file CoreDNS image
# needs), -trimpath, GOTOOLCHAIN=local, GOCACHE/GOMODCACHE shared with build.sh; at the lowest
# CPU priority (nice 19) since the machines are shared. The binaries land in
# ${HUSH_CACHE_DIR:-~/.cache/hush}/node-services/<key>/bin, key = go version + this script +
# every input file; a warm run is a hash and a stat. The last line of output is the bin
# directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${HUSH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hush}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false"
export GOCACHE="$cache_root/go/build" GOMODCACHE="$cache_root/go/mod"

inputs=("$here/build-node-services.sh" "$here/coredns/main.go" "$here/coredns/coredns.mod"
  "$here/coredns/coredns.sum" "$here/kube-router/kube-router.mod"
  "$here/kube-router/kube-router.sum")
key="$( { go version; for f in "${inputs[@]}"; do echo "${f#"$here"/}"; cat "$f"; done; } \
  | sha256sum | cut -c1-16)"
bin_dir="$cache_root/node-services/$key/bin"
if [[ -f "$bin_dir/.complete" ]]; then
  echo "Node services are up to date"
  echo "$bin_dir"
  exit 0
fi
mkdir -p "$bin_dir"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

build() {  # build <tool> <package> <ldflags>
  local tool="$1" package="$2" ldflags="$3" started=$SECONDS
  local work="$cache_root/node-services/$key/src/$tool"
  rm -rf "$work" && mkdir -p "$work"
  cp "$here/$tool/$tool.mod" "$work/go.mod"
  cp "$here/$tool/$tool.sum" "$work/go.sum"
  if compgen -G "$here/$tool/*.go" >/dev/null; then cp "$here/$tool"/*.go "$work/"; fi
  log "Building $tool from $package"
  # A file of its own per process: a concurrent build of the same key never leaves a
  # half-written binary under the final name.
  (cd "$work" && nice -n 19 go build -ldflags "$ldflags" -o "$bin_dir/$tool.tmp.$$" "$package")
  mv "$bin_dir/$tool.tmp.$$" "$bin_dir/$tool"
  log "Built $tool in $((SECONDS - started))s"
}

total_started=$SECONDS
coredns_version="$(sed -n 's/^require github.com\/coredns\/coredns \(v[^ ]*\)$/\1/p' \
  "$here/coredns/coredns.mod")"
router_version="$(sed -n 's/^\tgithub.com\/cloudnativelabs\/kube-router\/v2 \(v[^ ]*\).*$/\1/p' \
  "$here/kube-router/kube-router.mod")"
# CoreDNS reports its version from the constant in coremain; kube-router's from ldflags.
build coredns . "-s -w"
build kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router \
  "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$router_version"
echo "coredns $coredns_version" >"$bin_dir/versions.txt"
echo "kube-router $router_version" >>"$bin_dir/versions.txt"

touch "$bin_dir/.complete"
log "Built the node services in $((SECONDS - total_started))s"
echo "$bin_dir"
