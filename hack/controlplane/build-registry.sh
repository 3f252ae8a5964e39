#!/usr/bin/env bash
# Builds the local image registry of a real node: distribution's registry
# (github.com/distribution/distribution/v3/cmd/registry), from the module pinned in
# registry/distribution/go.mod and go.sum beside this script.
#
# Why a script and a module directory of their own: build.sh's cache key hashes every
# hack/controlplane/*/go.mod and go.sum, so a go.mod one level down from here would change
# that key and rebuild every control plane cache; the registry is only built for
# `hush dev up --real-node`. The module sits one level deeper (registry/distribution/) for
# the same reason.
#
# Same settings as build.sh: CGO off, -trimpath, GOTOOLCHAIN=local, GOCACHE/GOMODCACHE
# shared with build.sh, and `nice -n 19` (the machine's two cores are shared). The binary
# lands in ${HUSH_CACHE_DIR:-~/.cache/hush}/registry/<key>/bin, key = go version + this
# script + go.mod + go.sum; a warm run is a hash and a stat. The last line of output is the
# bin directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${HUSH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hush}"
module="$here/registry/distribution"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false"
export GOCACHE="$cache_root/go/build" GOMODCACHE="$cache_root/go/mod"

key="$( { go version; cat "$here/build-registry.sh" "$module/go.mod" "$module/go.sum"; } \
  | sha256sum | cut -c1-16)"
bin_dir="$cache_root/registry/$key/bin"
if [[ -f "$bin_dir/.complete" ]]; then
  echo "The registry binary is up to date"
  echo "$bin_dir"
  exit 0
fi
mkdir -p "$bin_dir"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

started=$SECONDS
version="$(cd "$module" && go list -m -f '{{.Version}}' github.com/distribution/distribution/v3)"
log "Building registry from github.com/distribution/distribution/v3/cmd/registry $version"
# A process of its own per output name: a concurrent build never leaves a half-written
# binary under the final name.
(cd "$module" && nice -n 19 go build \
  -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$version" \
  -o "$bin_dir/registry.tmp.$$" github.com/distribution/distribution/v3/cmd/registry)
mv "$bin_dir/registry.tmp.$$" "$bin_dir/registry"
touch "$bin_dir/.complete"
log "Built the registry in $((SECONDS - started))s"
echo "$bin_dir"
