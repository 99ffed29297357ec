# syntax=docker/dockerfile:1
#
# maskinporten-broker as a container image.
#
#   docker build -t maskinporten-broker .
#   docker run --rm -p 127.0.0.1:8080:8080 maskinporten-broker     # env: local, no credentials
#   curl localhost:8080/token/altinn
#
# tests/container_files.rs checks this file: the build command is the one CI runs, every COPY
# source exists, the runtime user is not root, the port, the health check and the shipped config.

# ---- build: the same command CI runs, nothing else ------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Only what `cargo build --release` reads: the manifest, the lock file and the library/binary
# sources. tests/, examples/ and bench/ are auto-discovered targets that a release build of the
# binary never compiles, so they stay out of the build context's layers.
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
RUN cargo build --release --locked

# ---- runtime: glibc + libgcc + CA certificates, no shell, no package manager ------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/maskinporten-broker /usr/local/bin/maskinporten-broker
COPY deploy/docker/broker.yaml /etc/maskinporten-broker/broker.yaml
# Listen on every interface of the container's own network namespace: the port is reachable
# only from the compose network / the pod unless someone publishes it (see broker.yaml).
# BROKER_CONFIG lets `docker exec <ctr> maskinporten-broker token altinn` find the same config.
ENV BROKER__LISTEN=0.0.0.0:8080 \
    BROKER_CONFIG=/etc/maskinporten-broker/broker.yaml
# distroless's "nonroot" user, numerically, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
# No curl in distroless: the binary checks itself (GET http://127.0.0.1:8080/healthz, exit 0/1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/maskinporten-broker","healthcheck"]
ENTRYPOINT ["/usr/local/bin/maskinporten-broker","--config","/etc/maskinporten-broker/broker.yaml"]
CMD ["serve"]
