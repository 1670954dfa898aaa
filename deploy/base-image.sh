#!/usr/bin/env bash
# Makes sure the debian:12 base image exists for the container engine.
# When it is missing and cannot be pulled (no registry reachable), builds it
# locally from the host's apt sources with mmdebstrap and imports it.
# A no-op when the image already exists.
#
#   deploy/base-image.sh            # CONTAINER_ENGINE=podman (default) or docker
set -euo pipefail
ENGINE="${CONTAINER_ENGINE:-podman}"
IMAGE="${BASE_IMAGE:-docker.io/library/debian:12}"
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF="$here/podman/containers.conf"
fi

if "$ENGINE" image exists "$IMAGE" 2>/dev/null ||
   "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
if timeout 60 "$ENGINE" pull -q "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
command -v mmdebstrap >/dev/null || {
  echo "base-image.sh: $IMAGE is missing, cannot be pulled, and mmdebstrap" \
       "is not installed (apt-get install mmdebstrap)" >&2
  exit 1
}
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "base-image.sh: building $IMAGE with mmdebstrap (about 2 min)" >&2
# Like Debian's -slim images: no documentation, manuals or translations, in
# this image and in everything later installed on top of it.
mmdebstrap --quiet --variant=minbase \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  bookworm "$tmp/bookworm.tar"
"$ENGINE" import --change 'CMD ["/bin/bash"]' "$tmp/bookworm.tar" "$IMAGE" >/dev/null
echo "base-image.sh: imported $IMAGE" >&2
