# syntax=docker/dockerfile:1
# One build for every Flotilla binary; pick the image with --target api|gateway|agent|agent-vector.

FROM rust:1-slim-bookworm AS chef
# make: the gateway's allocator (jemalloc) is built from C sources.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install --locked cargo-chef
WORKDIR /src

# The dependency recipe changes only when Cargo.toml/Cargo.lock do, so code changes reuse
# the cached dependency layer below.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# Queries are checked at run time against the embedded migrations: no database needed here.
RUN cargo build --release --locked --bin flotilla-api --bin flotilla-gateway --bin flotilla-agent

# Only the binary, CA certificates and glibc; runs as an unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER nonroot:nonroot

FROM runtime AS api
COPY --from=builder /src/target/release/flotilla-api /usr/local/bin/flotilla-api
ENV FLOTILLA__API__LISTEN=0.0.0.0:8080 FLOTILLA__LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=12 CMD ["/usr/local/bin/flotilla-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/flotilla-api"]

FROM runtime AS gateway
COPY --from=builder /src/target/release/flotilla-gateway /usr/local/bin/flotilla-gateway
ENV FLOTILLA__GATEWAY__LISTEN=0.0.0.0:8081 FLOTILLA__LOG__FORMAT=json
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=3s --retries=12 CMD ["/usr/local/bin/flotilla-gateway", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/flotilla-gateway"]

FROM runtime AS agent
COPY --from=builder /src/target/release/flotilla-agent /usr/local/bin/flotilla-agent
ENV VF_DATA_DIR=/home/nonroot/vf-agent
ENTRYPOINT ["/usr/local/bin/flotilla-agent"]

# The agent with a real Vector beside it, on the official Vector image: what a host that runs
# pipelines needs (the demo agents use it). 0.54 is the last Vector whose API speaks GraphQL,
# which the agent reads each pipeline's counters from; `vector` is /usr/bin/vector there.
FROM timberio/vector:0.54.0-debian AS agent-vector
COPY --from=builder /src/target/release/flotilla-agent /usr/local/bin/flotilla-agent
# Pipelines run as this unprivileged user; Vector's data dir is theirs too.
RUN useradd --system --no-log-init --uid 10001 --user-group \
        --create-home --home-dir /var/lib/vf-agent vf-agent \
    && mkdir -p /var/lib/vector \
    && chown vf-agent:vf-agent /var/lib/vector
USER 10001:10001
ENV VF_DATA_DIR=/var/lib/vf-agent VF_VECTOR_BIN=/usr/bin/vector VF_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/flotilla-agent"]
CMD []
