#!/usr/bin/env bash
# The Debian packages that `hush report`'s tests use: WeasyPrint's Pango and a font (the PDF),
# poppler-utils (pdftoppm renders the PDF to PNG) and chromium (the page in a headless
# browser). As root they are installed with apt-get when one is missing (apt-get update first
# when apt knows no candidate); otherwise this says what is missing and the tests that need it
# skip, saying why. A warm run is a dpkg query.
set -euo pipefail
packages=(libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils chromium)

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "Report tools are installed"
  exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
  log "Missing ${missing[*]}: install them from Debian (the report's PDF and browser tests skip)"
  exit 0
fi
candidate() {  # the version apt would install, or nothing
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}
if [[ -z "$(candidate "${missing[0]}")" ]]; then
  log "apt-get update (apt knows no candidate for ${missing[0]})"
  apt-get update -q >&2
fi
log "Installing ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
echo "Report tools are installed"
