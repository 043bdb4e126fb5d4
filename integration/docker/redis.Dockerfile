# Redis for the compose stack: the Redis base image (the official redis:7-bookworm, or offline
# edge-local/redis:bookworm from prepare-base-images.sh) run as the unprivileged `redis` user,
# with one ACL user per service (redis-users.acl; passwords from compose secrets) and the
# `default` user disabled.
#
# Build context: integration/docker.
#   DOCKER_BUILDKIT=1 docker build -f integration/docker/redis.Dockerfile \
#     --build-arg REDIS_IMAGE=edge-local/redis:bookworm -t edge/redis:dev integration/docker
ARG REDIS_IMAGE=redis:7-bookworm
FROM ${REDIS_IMAGE}
# Both bases have a `redis` user (the official image's uid 999, Debian's package a system uid);
# /data is where the AOF lives (the compose file mounts a volume there, which takes this owner).
RUN set -eu; \
    id redis >/dev/null 2>&1 || useradd --system --user-group --no-create-home --home-dir /data --shell /usr/sbin/nologin redis; \
    mkdir -p /data; chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh
# Mount another file over it to change the users' rules without a rebuild.
COPY redis-users.acl /etc/redis/users.acl
USER redis
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["--appendonly", "yes", "--dir", "/data"]
