#!/usr/bin/env bash
# Provides the tools of the sidecar benchmark (bench/bench_sidecar.py) without root:
#
# - nginx and wrk from Debian: `apt-get download` of the candidate versions, unpacked with
#   `dpkg -x` (no install, no root) and wrapped so that they find the unpacked shared
#   libraries (wrk needs LuaJIT, which a base image lacks);
# - hush-fixed-rate, the open-loop fixed-rate load generator (bench/fixedrate, Go standard
#   library only, built with the Go toolchain that `make test` already needs).
#
# Everything lives outside the repository, in ${HUSH_CACHE_DIR:-~/.cache/hush}/bench-tools/<key>,
# where the key hashes the package versions, this script, the Go source and the Go version:
# a warm run is an apt-cache query and a stat. When the packages cannot be downloaded (no
# package lists, no apt), nginx and wrk from PATH are used instead. Each binary is run once
# to check that its shared libraries resolve. The last line of output is the bin directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cache_root="${HUSH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hush}"
packages=(nginx wrk libluajit-5.1-2)
fixed_rate_source="$repo/bench/fixedrate"

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

candidate() {  # the version apt would install, or nothing
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}

pins=""
if command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
  for package in "${packages[@]}"; do
    version="$(candidate "$package")"
    if [[ -z "$version" ]]; then
      log "apt knows no candidate for $package (run apt-get update as root); using PATH"
      pins=""
      break
    fi
    pins+="$package=$version "
  done
fi

key="$( { echo "$pins"; dpkg --print-architecture 2>/dev/null || true; go version
  cat "$here/bench-tools.sh" "$fixed_rate_source"/*; } | sha256sum | cut -c1-16)"
tool_dir="$cache_root/bench-tools/$key"
bin_dir="$tool_dir/bin"
if [[ -f "$bin_dir/.complete" ]]; then
  echo "Benchmark tools are up to date"
  echo "$bin_dir"
  exit 0
fi
rm -rf "$tool_dir"
mkdir -p "$bin_dir" "$tool_dir/debs" "$tool_dir/root"

wrap() {  # wrap <name> <binary> [library dirs...]: bin/<name> runs <binary> with the libraries
  local name="$1" binary="$2"; shift 2
  local libraries; libraries="$(IFS=:; echo "$*")"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%q${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %q "$@"\n' \
    "$libraries" "$binary" >"$bin_dir/$name"
  chmod +x "$bin_dir/$name"
}

if [[ -n "$pins" ]]; then
  log "Downloading $pins"
  # As root, apt drops to the _apt user for downloads, which cannot write here; downloading
  # as root into a private directory is what the warning it would print suggests anyway.
  sandbox=()
  [[ "$(id -u)" == 0 ]] && sandbox=(-o APT::Sandbox::User=root)
  # shellcheck disable=SC2086 # one argument per package=version
  (cd "$tool_dir/debs" && apt-get download "${sandbox[@]}" -q $pins >&2)
  for deb in "$tool_dir"/debs/*.deb; do
    dpkg -x "$deb" "$tool_dir/root"
  done
  mapfile -t library_dirs < <(find "$tool_dir/root" -name '*.so*' -printf '%h\n' | sort -u)
  wrap nginx "$tool_dir/root/usr/sbin/nginx" "${library_dirs[@]}"
  wrap wrk "$tool_dir/root/usr/bin/wrk" "${library_dirs[@]}"
else
  for tool in nginx wrk; do
    found="$(command -v "$tool" || true)"
    if [[ -z "$found" ]]; then
      log "Cannot find $tool: install Debian's $tool, or let apt download it (apt-get update)"
      exit 1
    fi
    wrap "$tool" "$found"
  done
fi

log "Building hush-fixed-rate"
(cd "$fixed_rate_source" && GOTOOLCHAIN=local CGO_ENABLED=0 \
  GOCACHE="$cache_root/go/build" GOMODCACHE="$cache_root/go/mod" \
  go build -trimpath -o "$bin_dir/hush-fixed-rate" .)

# Each tool must start: a missing shared library shows up here, not in the middle of a run.
check() {  # check <expected text> <command...>
  local expected="$1" output; shift
  output="$("$@" 2>&1 || true)"
  [[ "$output" == *"$expected"* ]] || { log "$* does not run: $output"; exit 1; }
}
check "nginx version" "$bin_dir/nginx" -v
check "Will Glozer" "$bin_dir/wrk" -v
check "-rate" "$bin_dir/hush-fixed-rate" -h

touch "$bin_dir/.complete"
# Older keys (other package versions, an older generator) are never used again.
find "$cache_root/bench-tools" -mindepth 1 -maxdepth 1 -not -name "$key" -exec rm -rf {} +
log "Benchmark tools ready: $("$bin_dir/nginx" -v 2>&1), $("$bin_dir/wrk" -v 2>&1 | head -n 1)"
echo "$bin_dir"
