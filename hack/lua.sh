#!/usr/bin/env bash
# Provides Debian's Lua 5.4 interpreter (the Lua that Argo CD's health checks are written
# for) without root, for the tests of argocd/resource_customizations: `apt-get download`
# of the candidate lua5.4 and liblua5.4-0, unpacked with `dpkg -x` into
# ${HUSH_CACHE_DIR:-~/.cache/hush}/lua/<key> and wrapped so that it finds its library.
# Falls back to lua5.4 on PATH. The last line of output is the interpreter's path.
set -euo pipefail
cache_root="${HUSH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hush}"
packages=(lua5.4 liblua5.4-0)

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'; }

pins=""
if command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
  for package in "${packages[@]}"; do
    version="$(candidate "$package")"
    if [[ -z "$version" ]]; then pins=""; break; fi
    pins+="$package=$version "
  done
fi
if [[ -z "$pins" ]]; then
  found="$(command -v lua5.4 || true)"
  if [[ -z "$found" ]]; then
    echo "Cannot find lua5.4: install Debian's lua5.4, or let apt download it (apt-get update)" >&2
    exit 1
  fi
  echo "$found"
  exit 0
fi

key="$( { echo "$pins"; dpkg --print-architecture; cat "$0"; } | sha256sum | cut -c1-16)"
dir="$cache_root/lua/$key"
if [[ ! -f "$dir/.complete" ]]; then
  rm -rf "$dir"
  mkdir -p "$dir/debs" "$dir/root"
  sandbox=()
  [[ "$(id -u)" == 0 ]] && sandbox=(-o APT::Sandbox::User=root)
  # shellcheck disable=SC2086 # one argument per package=version
  (cd "$dir/debs" && apt-get download "${sandbox[@]}" -q $pins >&2)
  for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root"; done
  libraries="$(find "$dir/root" -name 'liblua5.4.so*' -printf '%h\n' | sort -u | paste -sd:)"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%q${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %q "$@"\n' \
    "$libraries" "$dir/root/usr/bin/lua5.4" >"$dir/lua5.4"
  chmod +x "$dir/lua5.4"
  "$dir/lua5.4" -e 'assert(_VERSION == "Lua 5.4")' >&2
  touch "$dir/.complete"
fi
echo "$dir/lua5.4"
