# The Socket.IO presence service; reachable only through the gateway, it trusts only a signed assertion.
#
# Build context: the repository root.
#   Connected machine (compiles in a rust image):
#     DOCKER_BUILDKIT=1 docker build -f integration/docker/presence-service.Dockerfile -t edge/presence-service .
#   Offline / CI (copies a binary the host built with `cargo build --release -p presence-service`):
#     DOCKER_BUILDKIT=1 docker build -f integration/docker/presence-service.Dockerfile \
#       --build-arg BINARY_FROM=prebuilt --build-arg BASE_IMAGE=edge-local/debian:bookworm-slim -t edge/presence-service .
# BuildKit builds only the stages the final image uses, so the prebuilt path never pulls RUST_IMAGE,
# and it sends only the files that COPY names (not target/ as a whole).
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim
# "source": compile in RUST_IMAGE. "prebuilt": take target/release/presence-service and
# target/release/healthprobe from the context.
ARG BINARY_FROM=source

FROM ${RUST_IMAGE} AS binary-source
# libz-ng-sys (pingora's compression) builds zlib-ng with cmake.
RUN command -v cmake >/dev/null || { apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*; }
WORKDIR /src
# Every workspace member (and every [patch] path) must be present for cargo to load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY assertion assertion
COPY config-errors config-errors
COPY gateway gateway
COPY healthprobe healthprobe
COPY presence-service presence-service
COPY integration/demo-service integration/demo-service
# The patched crates that root Cargo.toml's [patch.crates-io] points at.
COPY vendor vendor
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p presence-service -p healthprobe \
    && objcopy --only-keep-debug target/release/presence-service /presence-service.debug \
    && strip --strip-all -o /presence-service target/release/presence-service \
    && strip --strip-all -o /healthprobe target/release/healthprobe

FROM scratch AS binary-prebuilt
# Folder of the host-built binary, relative to the context (build-images.sh stages stripped
# copies in target/docker-bin/<profile>; target/debug works for a quick try).
ARG BINARY_DIR=target/release
COPY ${BINARY_DIR}/presence-service /presence-service
COPY ${BINARY_DIR}/healthprobe /healthprobe

FROM binary-${BINARY_FROM} AS binary

FROM ${BASE_IMAGE} AS runtime
# Only CA certificates on top of the base (the offline base has them, debian:*-slim not) and,
# below, the binary and healthprobe (the HEALTHCHECK: an HTTP GET with nothing but std, so no
# curl). The binary is stripped (the source stage keeps /<name>.debug for
# `docker build --target binary-source` to export as an artifact).
RUN set -eu; \
    if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends ca-certificates; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=binary /presence-service /usr/local/bin/presence-service
COPY --from=binary /healthprobe /usr/local/bin/healthprobe

USER 10001:10001
EXPOSE 3001
HEALTHCHECK --interval=2s --timeout=3s --start-period=20s --retries=5 \
  CMD ["/usr/local/bin/healthprobe", "http://127.0.0.1:3001/healthz"]
ENTRYPOINT ["/usr/local/bin/presence-service"]
CMD ["--config", "/etc/presence/presence.toml"]
