#!/usr/bin/env bash
# Debian data packages the project uses where they exist (idempotent; skipped with a message where apt-get or
# root is missing, where the tests that need them skip with their own message):
#   visp-images-data   real camera sequences of the real-data test tier (castel RGB-D, mbt/cube; GPL-2+ data)
#   gnome-backgrounds  photos of the procedural benchmark's pool (match_ros.sim.procedural.photo_pool); the
#                      benchmark's cases, and so its figures, depend on the photos installed
set -uo pipefail
PACKAGES=(visp-images-data gnome-backgrounds)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    echo "install_system_data: not installed: ${missing[*]} (needs apt-get as root); the real-data tests skip" >&2
    exit 0
fi
echo "install_system_data: apt-get install ${missing[*]}"
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null || echo "install_system_data: could not install ${missing[*]}" >&2
fi
exit 0
