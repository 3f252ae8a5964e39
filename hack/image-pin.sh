#!/usr/bin/env bash
# `make image-pin`: pin the Dockerfile's base image to the digest that its tag has now.
#
#   hack/image-pin.sh [TAG]    TAG defaults to the tag in the Dockerfile's ARG PYTHON_IMAGE
#                              (e.g. python:3.11.16-slim-bookworm); give another to move on
#
# Resolves TAG with crane (go-containerregistry), run from the Go module proxy at a pinned
# version ($CRANE names another crane), to the digest of the manifest the registry serves:
# for the official python images a multi-platform index, so the pin holds for amd64 and
# arm64. Rewrites only the ARG PYTHON_IMAGE line ($DOCKERFILE names another file). Needs
# access to the registry (Docker Hub); review the change like any other dependency bump.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dockerfile="${DOCKERFILE:-$root/Dockerfile}"
crane_module="github.com/google/go-containerregistry/cmd/crane@v0.22.1"

current="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$dockerfile")"
if [[ -z "$current" ]]; then
  echo "$dockerfile has no ARG PYTHON_IMAGE= line" >&2
  exit 1
fi
tag="${1:-${current%@*}}"
if [[ -n "${CRANE:-}" ]]; then
  crane=("$CRANE")
else
  crane=(go run "$crane_module")
fi
digest="$("${crane[@]}" digest "$tag")"
if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "crane digest $tag answered '$digest', not a sha256 digest" >&2
  exit 1
fi
pinned="$tag@$digest"
updated="$(mktemp "$dockerfile.XXXXXX")"
trap 'rm -f "$updated"' EXIT
sed "s|^ARG PYTHON_IMAGE=.*|ARG PYTHON_IMAGE=$pinned|" "$dockerfile" >"$updated"
cat "$updated" >"$dockerfile"
if [[ "$current" == "$pinned" ]]; then
  echo "Already pinned: $pinned"
else
  echo "Pinned $pinned (was $current)"
fi
