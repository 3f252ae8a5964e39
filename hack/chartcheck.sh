#!/usr/bin/env bash
# Builds hush-chartcheck (hack/chartcheck), which checks the chart's PrometheusRule with
# Prometheus's own PromQL parser and rule-file validation (what `promtool check rules` runs)
# and its Grafana dashboard with the Grafana Foundation SDK's dashboard model.
#
# Like hack/controlplane/build.sh: built from pinned Go modules through the module proxy
# (no release downloads), with the binary, GOCACHE and GOMODCACHE outside the repository in
# ${HUSH_CACHE_DIR:-~/.cache/hush}, under a key that hashes go.mod, go.sum, the sources,
# this script and the Go version. A warm run is a hash and a stat. The last line of output
# is the binary's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source_dir="$here/chartcheck"
cache_root="${HUSH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hush}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
export GOCACHE="$cache_root/go/build" GOMODCACHE="$cache_root/go/mod"

key="$( { go version; cat "$here/chartcheck.sh"; for f in "$source_dir"/go.mod \
  "$source_dir"/go.sum "$source_dir"/*.go; do echo "${f#"$source_dir"/}"; cat "$f"; done; } \
  | sha256sum | cut -c1-16)"
out_dir="$cache_root/chartcheck/$key"
binary="$out_dir/hush-chartcheck"
if [[ -f "$out_dir/.complete" ]]; then
  echo "hush-chartcheck is up to date"
  echo "$binary"
  exit 0
fi
mkdir -p "$out_dir"

started=$SECONDS
printf '%s Building hush-chartcheck\n' "$(date -u +%H:%M:%S)" >&2
(cd "$source_dir" && go build -ldflags "-s -w" -o "$binary.$$.tmp" .)
mv "$binary.$$.tmp" "$binary"
touch "$out_dir/.complete"
# Older keys (other pins, older sources) are never used again.
find "$cache_root/chartcheck" -mindepth 1 -maxdepth 1 -not -name "$key" -exec rm -rf {} +
printf '%s Built hush-chartcheck in %ss\n' "$(date -u +%H:%M:%S)" "$((SECONDS - started))" >&2
echo "$binary"
