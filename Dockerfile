# syntax=docker/dockerfile:1

# cargo-chef splits the build so that the dependencies are compiled in a layer of their own,
# rebuilt only when Cargo.toml or Cargo.lock change, not on every change to our code.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
# apalis's SQL is checked against its bundled offline data (as .cargo/config.toml says), also
# while the dependencies are cooked, before that file is copied in.
ENV SQLX_OFFLINE=true
WORKDIR /src

# Planner: the recipe (the workspace's manifests and lock file, without our code).
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin fanqueue

# Build: the dependencies from the recipe (cached), then the release binary.
FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin fanqueue
COPY . .
RUN cargo build --release --locked --bin fanqueue \
 && cp target/release/fanqueue /usr/local/bin/fanqueue

# Runtime: a slim image, CA certificates (for AWS and the platform over TLS), an unprivileged
# user. The same image runs every role: the command picks it (serve, worker, dispatch, …).
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/fanqueue --create-home fanqueue
COPY --from=build /usr/local/bin/fanqueue /usr/local/bin/fanqueue
USER fanqueue
WORKDIR /var/lib/fanqueue
ENV LISTEN_ADDR=0.0.0.0:8080 \
    DATA_DIR=/var/lib/fanqueue/data \
    LOG_FORMAT=json
EXPOSE 8080
# The API's /healthz at LISTEN_ADDR, probed by the binary itself (the image has no curl).
# Roles without an HTTP server (worker, dispatch, sweep) turn it off: see compose.yaml.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["fanqueue", "healthcheck"]
ENTRYPOINT ["fanqueue"]
CMD ["all"]
