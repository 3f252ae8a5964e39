#!/usr/bin/env bash
# The install steps of the Hush image, in one place. The Dockerfile RUNs this script, and
# tests/image/test_image_install.py runs the same subcommands in a fresh directory outside
# the repository, so the steps that are tested are the steps that ship.
#
#   image-install.sh toolchain    TOOLCHAIN               a venv with the pinned pip and setuptools
#   image-install.sh dependencies TOOLCHAIN PREFIX        a venv at PREFIX (without pip) holding
#                                                         every locked runtime dependency
#   image-install.sh hush         TOOLCHAIN SOURCE PREFIX build Hush's wheel from SOURCE (a copy
#                                                         of pyproject.toml, README.md, operator/)
#                                                         and install it into PREFIX
#
# Everything comes from the lock files beside this script, checked by hash
# (pip --require-hashes): image-build-requirements.txt for the toolchain,
# image-requirements.txt for the runtime (`make image-lock` regenerates both from
# pyproject.toml). Only wheels are installed (--only-binary): the slim base has no compiler,
# and a wheel is the file whose hash was reviewed. PREFIX gets no pip of its own: the
# toolchain's pip installs into it (pip --python), so the runtime image carries no installer.
# Every module is then compiled to bytecode, so at run time nothing needs to be written (the
# pods run with a read-only root filesystem): in parallel, and as unchecked-hash .pyc files,
# which stay valid whatever the files' timestamps become in image layers (the image is
# immutable, so the sources never change under them).
#
# The interpreter is $PYTHON (default python3). Where pip finds the files is the caller's
# business (PIP_* variables): the Dockerfile uses PyPI through a build cache mount, the test
# a local wheelhouse of the same hash-locked files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

usage() {
  sed -n '2,12p' "$0" >&2
  exit 2
}

toolchain_pip() {  # toolchain_pip <toolchain> <pip arguments...>
  local toolchain="$1"
  shift
  "$toolchain/bin/python" -m pip --disable-pip-version-check --no-input "$@"
}

compile_bytecode() {  # compile_bytecode <prefix> <path...>
  local prefix="$1"
  shift
  "$prefix/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$@"
}

site_packages() {  # site_packages <prefix>
  "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'
}

command="${1:-}"
[[ $# -ge 1 ]] && shift
case "$command" in
  toolchain)
    [[ $# -eq 1 ]] || usage
    toolchain="$1"
    "$python" -m venv "$toolchain"
    toolchain_pip "$toolchain" install --require-hashes --only-binary=:all: --no-deps \
      --requirement "$here/image-build-requirements.txt"
    ;;
  dependencies)
    [[ $# -eq 2 ]] || usage
    toolchain="$1" prefix="$2"
    "$python" -m venv --without-pip "$prefix"
    toolchain_pip "$toolchain" --python "$prefix/bin/python" install --no-compile \
      --require-hashes --only-binary=:all: --no-deps \
      --requirement "$here/image-requirements.txt"
    compile_bytecode "$prefix" "$(site_packages "$prefix")"
    ;;
  hush)
    [[ $# -eq 3 ]] || usage
    toolchain="$1" source="$2" prefix="$3"
    wheels="$(mktemp -d)"
    trap 'rm -rf "$wheels"' EXIT
    # No build isolation: the build backend is the toolchain's hash-checked setuptools,
    # not whatever an isolated build environment would download.
    toolchain_pip "$toolchain" wheel --no-deps --no-build-isolation --wheel-dir "$wheels" \
      "$source"
    toolchain_pip "$toolchain" --python "$prefix/bin/python" install --no-compile --no-deps \
      --no-index "$wheels"/hush-*.whl
    compile_bytecode "$prefix" "$(site_packages "$prefix")/hush"
    # Every dependency the wheel declares must be in PREFIX already (from the lock).
    toolchain_pip "$toolchain" --python "$prefix/bin/python" check
    ;;
  *)
    usage
    ;;
esac
