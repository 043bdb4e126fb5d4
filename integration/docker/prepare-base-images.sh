#!/usr/bin/env bash
# Builds the base images the Dockerfiles start FROM, without any image registry.
#
# Why: air-gapped machines (and this project's CI) can reach Debian's package mirror but no
# image registry, so `FROM debian:bookworm-slim` cannot be pulled there. This script makes an
# equivalent root file system with debootstrap from Debian's packages and `docker import`s it
# under a local tag; the Dockerfiles name their base through a build argument
# (BASE_IMAGE / NODE_IMAGE), so the same Dockerfiles pull ordinary images on a connected machine
# and use these tags offline.
#
# Three images, each a minimal Debian (debootstrap --variant=minbase) plus:
#   BASE_TAG   ca-certificates                -> BASE_IMAGE of the Rust services' runtime stage
#   NODE_TAG   the same plus Debian's nodejs  -> NODE_IMAGE of the Express service
#   REDIS_TAG  the same plus redis-server     -> REDIS_IMAGE of the compose file
# No curl: the Rust images' health check is the workspace's `healthprobe`, the Express image's
# is node's own fetch, Redis's is redis-cli.
#
# Usage: integration/docker/prepare-base-images.sh            # builds only missing tags
#        FORCE=1 integration/docker/prepare-base-images.sh    # rebuilds all
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm),
#        BASE_TAG, NODE_TAG, REDIS_TAG (run-suite.sh uses the defaults), CACHE_DIR (.debs kept
#        between runs so a rebuild downloads nothing).
set -euo pipefail

SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_TAG=${BASE_TAG:-edge-local/debian:${SUITE}-slim}
NODE_TAG=${NODE_TAG:-edge-local/node:${SUITE}-slim}
REDIS_TAG=${REDIS_TAG:-edge-local/redis:${SUITE}}
DOCKER=${DOCKER:-docker}
FORCE=${FORCE:-0}

# What the runtime stages need: TLS roots for outbound HTTPS.
BASE_PACKAGES=ca-certificates
# Debian's Node.js (18 on bookworm) runs the Express service; npm is not needed at run time.
NODE_PACKAGES=${BASE_PACKAGES},nodejs
# Debian's redis-server (7.0 on bookworm) with redis-cli for the healthcheck.
REDIS_PACKAGES=${BASE_PACKAGES},redis-server

log() { printf '[prepare-base-images] %s\n' "$*" >&2; }

# True when TAG exists and was made from PACKAGES.
have_image() {
  local made
  made=$("$DOCKER" image inspect -f '{{index .Config.Labels "edge.base-packages"}}' "$1" 2>/dev/null) &&
    [[ $made == "$2" ]]
}

need() {
  command -v "$1" >/dev/null 2>&1 || { log "missing '$1' (apt-get install -y $2)"; exit 1; }
}

# Builds one root file system and imports it as TAG.
build_rootfs_image() {
  local tag=$1 packages=$2
  if [[ $FORCE != 1 ]] && have_image "$tag" "$packages"; then
    log "$tag exists, skipping (FORCE=1 rebuilds)"
    return
  fi
  local root
  root=$(mktemp -d /tmp/rootfs.XXXXXX)
  # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
  trap "rm -rf '$root'" RETURN
  log "debootstrap $SUITE ($packages) into $root"
  mkdir -p "$CACHE_DIR"
  debootstrap --variant=minbase --include="$packages" --cache-dir="$CACHE_DIR" \
    "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -40 "$root.log" >&2
    exit 1
  }
  rm -f "$root.log"
  # Keep the image small, as the official slim image does.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  log "docker import -> $tag"
  tar -C "$root" --numeric-owner -c . |
    "$DOCKER" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      --change "LABEL edge.base-packages=$packages" \
      - "$tag" >/dev/null
}

need debootstrap debootstrap
need "$DOCKER" docker.io
CACHE_DIR=${CACHE_DIR:-/var/cache/edge-base-images/debs}

build_rootfs_image "$BASE_TAG" "$BASE_PACKAGES"
build_rootfs_image "$NODE_TAG" "$NODE_PACKAGES"
build_rootfs_image "$REDIS_TAG" "$REDIS_PACKAGES"

log "ready: BASE_IMAGE=$BASE_TAG NODE_IMAGE=$NODE_TAG REDIS_IMAGE=$REDIS_TAG"
