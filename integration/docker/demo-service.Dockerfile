# The demo login service (axum-login, tower-sessions in SQLite): the sessions file is shared with the gateway through a volume.
# It also serves the seed's web page (integration/web, React + socket.io-client) at /.
#
# Build context: the repository root.
#   Connected machine (compiles in a rust image):
#     DOCKER_BUILDKIT=1 docker build -f integration/docker/demo-service.Dockerfile -t edge/demo-service .
#   Offline / CI (copies a binary the host built with `cargo build --release -p demo-service`):
#     DOCKER_BUILDKIT=1 docker build -f integration/docker/demo-service.Dockerfile \
#       --build-arg BINARY_FROM=prebuilt --build-arg WEB_FROM=prebuilt \
#       --build-arg BASE_IMAGE=edge-local/debian:bookworm-slim -t edge/demo-service .
#     (WEB_FROM=prebuilt takes integration/web/dist: `cd integration/web && npm ci && npm run build`.)
# BuildKit builds only the stages the final image uses, so the prebuilt path never pulls RUST_IMAGE,
# and it sends only the files that COPY names (not target/ as a whole).
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim
# "source": compile in RUST_IMAGE. "prebuilt": take target/release/demo-service and
# target/release/healthprobe from the context.
ARG BINARY_FROM=source
ARG NODE_IMAGE=node:20-bookworm-slim
# "source": build the web page with npm in NODE_IMAGE. "prebuilt": take integration/web/dist.
ARG WEB_FROM=source

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
    cargo build --release --locked -p demo-service -p healthprobe \
    && objcopy --only-keep-debug target/release/demo-service /demo-service.debug \
    && strip --strip-all -o /demo-service target/release/demo-service \
    && strip --strip-all -o /healthprobe target/release/healthprobe

FROM scratch AS binary-prebuilt
# Folder of the host-built binary, relative to the context (build-images.sh stages stripped
# copies in target/docker-bin/<profile>; target/debug works for a quick try).
ARG BINARY_DIR=target/release
COPY ${BINARY_DIR}/demo-service /demo-service
COPY ${BINARY_DIR}/healthprobe /healthprobe

FROM binary-${BINARY_FROM} AS binary

FROM ${NODE_IMAGE} AS web-source
WORKDIR /web
COPY integration/web/package.json integration/web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY integration/web/index.html integration/web/vite.config.js ./
COPY integration/web/src src
RUN npm run build && mv dist /dist

FROM scratch AS web-prebuilt
COPY integration/web/dist /dist

FROM web-${WEB_FROM} AS web

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
COPY --from=binary /demo-service /usr/local/bin/demo-service
COPY --from=binary /healthprobe /usr/local/bin/healthprobe
COPY --from=web /dist /usr/share/demo-web
RUN mkdir -p /var/lib/demo && chown 10001:10001 /var/lib/demo
VOLUME /var/lib/demo
ENV DEMO_LISTEN=0.0.0.0:3000 DEMO_SESSIONS_DB=/var/lib/demo/sessions.db DEMO_WEB_DIST=/usr/share/demo-web
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=2s --timeout=3s --start-period=20s --retries=5 \
  CMD ["/usr/local/bin/healthprobe", "http://127.0.0.1:3000/healthz"]
ENTRYPOINT ["/usr/local/bin/demo-service"]
