#!/usr/bin/env bash
# Regenerates the image's lock files with pip-tools (pip-compile --generate-hashes):
#   hack/image-requirements.txt        every runtime dependency of Hush, pinned, with the
#                                      hashes of all of its files on PyPI (every platform)
#   hack/image-build-requirements.txt  pip and setuptools for hack/image-install.sh
# from pyproject.toml and hack/image-build-requirements.in. Run it (`make image-lock`) after
# changing a dependency in pyproject.toml; tests/image/test_image_lock.py fails until then.
# Needs PyPI; takes minutes (pip-compile fetches every file's hash). pip-tools runs in a
# throwaway venv and reads a copy of the sources, so nothing is written into the repository
# but the two lock files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
python="${PYTHON:-python3}"
pip_tools_version="7.6.2"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install --quiet --disable-pip-version-check \
  "pip==25.3" "pip-tools==$pip_tools_version"
mkdir "$work/source"
cp -R "$root/pyproject.toml" "$root/README.md" "$root/operator" "$here/image-build-requirements.in" \
  "$work/source/"
cd "$work/source"  # relative input names, so the files' "# via" comments do not name $work

compile() {  # compile <input> <output>
  CUSTOM_COMPILE_COMMAND="make image-lock" "$work/tools/bin/pip-compile" \
    --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links \
    --no-emit-index-url --resolver=backtracking --output-file "$2" "$1"
}
compile pyproject.toml image-requirements.txt
compile image-build-requirements.in image-build-requirements.txt
mv image-requirements.txt image-build-requirements.txt "$here/"
echo "Wrote hack/image-requirements.txt and hack/image-build-requirements.txt"
