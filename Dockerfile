# Build stage: compile the release binary.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin fanqueue \
 && cp target/release/fanqueue /usr/local/bin/fanqueue

# Runtime stage: a slim image and an unprivileged user.
FROM debian:bookworm-slim
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
ENTRYPOINT ["fanqueue"]
CMD ["all"]
