#!/usr/bin/env bash
# Builds the five images of the compose stack (gateway, presence-service, demo-service,
# express-service, redis), tagged $IMAGE_PREFIX/<name>:$IMAGE_TAG (edge/<name>:dev), as the
# compose file names them, and prints their sizes.
#
#   integration/docker/build-images.sh                      # offline: local bases, host binaries
#   IMAGES_FROM=registry integration/docker/build-images.sh # connected: pull bases, compile inside
#
# Env: IMAGES_FROM (local|registry, default local), PROFILE (release|debug: the cargo profile of
# the host-built binaries, default release), SKIP_HOST_BUILD=1 (use target/$PROFILE as it is),
# IMAGE_PREFIX (edge), IMAGE_TAG (dev), DOCKER (a CLI that builds with BuildKit),
# KEEP_DEBUG=1 (also keep each binary's split debug info, target/docker-bin/$PROFILE/*.debug,
# linked from the stripped binary by .gnu_debuglink: an artifact to archive, not in the image).
#
# The binaries go into the images stripped (target/docker-bin/$PROFILE): a debug build shrinks
# from ~100-250 MB to ~20-40 MB, a release build by about a third.
#
# Offline, the Rust binaries are compiled once on the host (one cargo build for all three,
# sharing the target dir and its cache) and copied into the slim runtime images; node_modules is
# installed on the host and copied likewise. No image registry is needed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
IMAGES_FROM=${IMAGES_FROM:-local}
PROFILE=${PROFILE:-release}
IMAGE_PREFIX=${IMAGE_PREFIX:-edge}
IMAGE_TAG=${IMAGE_TAG:-dev}

log() { printf '[build-images %s] %s\n' "$(date +%T)" "$*" >&2; }

# Debian's docker.io CLI builds with BuildKit on its own; a newer CLI needs the buildx plugin.
if [[ -z ${DOCKER:-} ]]; then
  if docker buildx version >/dev/null 2>&1; then DOCKER=docker
  elif [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker
  else DOCKER=docker
  fi
fi
export DOCKER DOCKER_BUILDKIT=1

case $IMAGES_FROM in
  local)
    log "base images (debootstrap + docker import; cached)"
    DOCKER=$DOCKER "$here/prepare-base-images.sh"
    base=edge-local/debian:bookworm-slim
    node=edge-local/node:bookworm-slim
    if [[ ${SKIP_HOST_BUILD:-0} != 1 ]]; then
      log "host build: cargo build ($PROFILE) -p gateway -p presence-service -p demo-service -p healthprobe"
      profile_flag=(--release)
      [[ $PROFILE == debug ]] && profile_flag=()
      (cd "$repo" && cargo build "${profile_flag[@]}" --locked -p gateway -p presence-service -p demo-service -p healthprobe)
    fi
    # The demo service's web page: built again only when its sources are newer than the build
    # (CI's earlier `web` suite has just built it).
    web=$repo/integration/web
    if [[ ! -f $web/dist/index.html ]] \
       || [[ -n $(find "$web/src" "$web/index.html" "$web/vite.config.js" "$web/package-lock.json" -newer "$web/dist/index.html" -print -quit) ]]; then
      log "host: web page (npm ci && npm run build in integration/web)"
      (cd "$web" && npm ci --no-audit --no-fund --loglevel=error && npm run build >/dev/null)
    fi
    log "host: npm ci --omit=dev (express-service)"
    (cd "$repo/integration/express-service" && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
    stage=$repo/target/docker-bin/$PROFILE
    mkdir -p "$stage"
    for bin in gateway presence-service demo-service; do
      src=$repo/target/$PROFILE/$bin
      if [[ ${KEEP_DEBUG:-0} == 1 ]]; then
        objcopy --only-keep-debug "$src" "$stage/$bin.debug"
        strip --strip-all -o "$stage/$bin" "$src"
        (cd "$stage" && objcopy --add-gnu-debuglink="$bin.debug" "$bin")
      else
        strip --strip-all -o "$stage/$bin" "$src"
      fi
    done
    # The health check every Rust image carries instead of curl (std only, no debug info kept).
    strip --strip-all -o "$stage/healthprobe" "$repo/target/$PROFILE/healthprobe"
    log "stripped binaries in target/docker-bin/$PROFILE: $(cd "$stage" && du -sh gateway presence-service demo-service healthprobe | tr '\n\t' ', ')"
    rust_args=(--build-arg BINARY_FROM=prebuilt --build-arg "BINARY_DIR=target/docker-bin/$PROFILE" --build-arg "BASE_IMAGE=$base")
    demo_args=(--build-arg WEB_FROM=prebuilt)
    node_args=(--build-arg NODE_MODULES_FROM=context --build-arg "NODE_IMAGE=$node")
    redis_args=(--build-arg "REDIS_IMAGE=edge-local/redis:bookworm")
    ;;
  registry)
    rust_args=()
    demo_args=()
    node_args=()
    redis_args=()
    ;;
  *) echo "IMAGES_FROM must be local or registry" >&2; exit 2 ;;
esac

# Each build re-tags a name; the image it replaces would stay behind, dangling, at a few hundred
# MB a build. Remember what the tags pointed at, and remove those images afterwards if nothing
# else names them (a container still using one keeps it: `docker rmi` without -f refuses).
previous=()
for svc in gateway presence-service demo-service express-service redis; do
  id=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE_PREFIX/$svc:$IMAGE_TAG" 2>/dev/null) && previous+=("$id")
done

for svc in gateway presence-service demo-service; do
  log "$IMAGE_PREFIX/$svc:$IMAGE_TAG"
  args=("${rust_args[@]}")
  [[ $svc == demo-service ]] && args+=("${demo_args[@]}")
  "$DOCKER" build -q "${args[@]}" -f "$here/$svc.Dockerfile" -t "$IMAGE_PREFIX/$svc:$IMAGE_TAG" "$repo" >/dev/null
done
log "$IMAGE_PREFIX/express-service:$IMAGE_TAG"
"$DOCKER" build -q "${node_args[@]}" -f "$here/express-service.Dockerfile" \
  -t "$IMAGE_PREFIX/express-service:$IMAGE_TAG" "$repo/integration/express-service" >/dev/null
log "$IMAGE_PREFIX/redis:$IMAGE_TAG"
"$DOCKER" build -q "${redis_args[@]}" -f "$here/redis.Dockerfile" -t "$IMAGE_PREFIX/redis:$IMAGE_TAG" "$here" >/dev/null

for id in "${previous[@]}"; do
  [[ -n $("$DOCKER" image inspect -f '{{join .RepoTags ","}}' "$id" 2>/dev/null) ]] && continue
  "$DOCKER" rmi "$id" >/dev/null 2>&1 || true
done

log "image sizes (MB):"
for svc in gateway presence-service demo-service express-service redis; do
  bytes=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE_PREFIX/$svc:$IMAGE_TAG")
  printf '  %-40s %5d MB\n' "$IMAGE_PREFIX/$svc:$IMAGE_TAG" $((bytes / 1000000)) >&2
done
