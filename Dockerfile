# syntax=docker/dockerfile:1
# Build:  docker build -t orderflow .
# Run:    docker run -p 8080:8080 -e DATABASE_URL=... orderflow

############################ builder ############################
FROM rust:1-bookworm AS builder

# cmake: rdkafka builds librdkafka from source (gcc/make/libssl-dev come with the image).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Cache mounts keep the registry and target/ between builds; the binary is copied out
# in the same step because the target/ mount is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p orderflow \
 && install -D -m 0755 target/release/orderflow /out/orderflow

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to managed MySQL/Redis/Kafka and the OTLP endpoint.
# Unpinned on purpose: Debian security updates replace old versions, so pinning breaks
# rebuilds; the base image tag is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 orderflow \
 && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin orderflow

COPY --from=builder /out/orderflow /usr/local/bin/orderflow
# Fail the build, not the rollout, if the binary needs a shared library this image lacks
# (e.g. libssl3 should rdkafka's `ssl` feature ever be enabled).
RUN /usr/local/bin/orderflow --help > /dev/null

ENV HTTP_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json

# Numeric UID so Kubernetes' runAsNonRoot can verify it without /etc/passwd lookups.
USER 10001:10001
EXPOSE 8080

# The image has no curl/wget: the binary's own `healthcheck` subcommand GETs
# http://127.0.0.1:8080/actuator/health/liveness and exits 0 (up) or 1 (down).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/orderflow", "healthcheck"]

# The binary is PID 1 and handles SIGTERM itself (stop accepting, drain in-flight work).
CMD ["orderflow", "serve"]
