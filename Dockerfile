# syntax=docker/dockerfile:1
# The image of every cluster-sst process in AWS (sst.config.ts builds it once per
# container; each service's `command` picks the binary):
#   /app/bin/      cluster-manager, cluster-proxy, cluster-runner, cluster-plugin-host, cluster-gateway, clusterctl,
#                  cluster-plugin-describe (clusterctl plugin push)
#   /app/plugins/  the entity plugins (*.so) the runners load
#   /app/config/   local.toml; containers override host/port/plugins with --set and
#                  CLUSTER_* variables, and SST links arrive as SST_RESOURCE_* variables.
#   /app/certs/    rds-global-bundle.pem, the CA bundle of Amazon RDS: the manager and the
#                  runners connect with sslmode=verify-full against it.
# curl is there for ECS's container health checks (curl http://127.0.0.1:<admin port>/healthz).
#
# Build it by hand with: docker build -t cluster-sst .
# deploy/dockerfile.test.mjs checks its shape (no Docker needed).

# --- build: the release preset, made by the same script as a local build -------------------
FROM debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
# The package list lives in scripts/ alone: installing it before copying the sources keeps
# that layer cached across source changes.
COPY scripts/ scripts/
RUN scripts/dev deps
COPY . .
RUN scripts/dev build

# --- runtime: the binaries, the plugins, the config and only their shared libraries -------
FROM debian:bookworm-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libboost-filesystem1.74.0 \
      libpq5 \
      libssl3 \
      libspdlog1.10 \
      libfmt9 \
      libtomlplusplus3 \
      curl \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system cluster \
 && useradd --system --gid cluster --home-dir /app --no-create-home --shell /usr/sbin/nologin cluster
WORKDIR /app
COPY --from=build /src/build/release/bin/ /app/bin/
COPY --from=build /src/build/release/plugins/*.so /app/plugins/
COPY --from=build /src/config/ /app/config/
# Fetched at build time (AWS rotates its CAs and publishes the bundle at this address), so
# an image built today trusts today's RDS certificates.
ADD --chmod=0644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /app/certs/rds-global-bundle.pem
USER cluster
# Manager, proxy, gateway and the four runners of the Runner task.
EXPOSE 8080 3333 8787 34431-34434
# Their admin HTTP endpoints (/metrics, /healthz, /readyz): manager 9090, proxy 9091,
# gateway 9092, runner-1..4 9093-9096.
EXPOSE 9090 9091 9092 9093-9096
# The processes stop gracefully on SIGTERM (ECS waits up to the task's stopTimeout).
STOPSIGNAL SIGTERM
CMD ["/app/bin/cluster-manager", "--config", "/app/config/local.toml", "--set", "manager.host=0.0.0.0"]
