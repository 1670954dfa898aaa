#!/usr/bin/env bash
# Installs the Debian 12 packages `make test-container` / `make test-compose`
# need: podman (runc, netavark with aardvark-dns so compose services resolve
# each other by name), podman-compose, mmdebstrap for the base image.
# Only missing packages are installed; uses sudo when not root.
set -euo pipefail
PKGS=(podman runc netavark aardvark-dns podman-compose mmdebstrap uidmap curl
  prometheus python3-yaml)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "forq: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
