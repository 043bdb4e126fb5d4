# The Express backend (express-session + connect-redis + Passport) that the gateway fronts.
#
# Build context: integration/express-service.
#   Connected machine:  docker build -f integration/docker/express-service.Dockerfile integration/express-service
#   Offline (CI):       npm ci --omit=dev in integration/express-service on the host, then
#                       --build-arg NODE_IMAGE=edge-local/node:bookworm-slim --build-arg NODE_MODULES_FROM=context
# BuildKit is needed (DOCKER_BUILDKIT=1): it builds only the stages the final image uses.
ARG NODE_IMAGE=node:20-bookworm-slim
# Where node_modules comes from: "registry" runs `npm ci` in the build (needs the npm registry),
# "context" takes the build context's node_modules, installed beforehand with `npm ci --omit=dev`.
ARG NODE_MODULES_FROM=registry

FROM ${NODE_IMAGE} AS modules-registry
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM scratch AS modules-context
COPY node_modules /app/node_modules

FROM modules-${NODE_MODULES_FROM} AS modules

FROM ${NODE_IMAGE} AS runtime
# Nothing added to the base but the unprivileged user: the healthcheck is node itself (its
# built-in fetch), so the image needs no curl.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin express
WORKDIR /app
COPY --from=modules /app/node_modules ./node_modules
COPY package.json server.js ./
USER 10001:10001
ENV NODE_ENV=production PORT=3000 HOST=0.0.0.0
EXPOSE 3000
HEALTHCHECK --interval=2s --timeout=3s --start-period=20s --retries=5 \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.PORT}/healthz`, { signal: AbortSignal.timeout(2000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "server.js"]
