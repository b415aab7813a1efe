# The proxy's image. `docker compose up` builds it (see docker-compose.yml); alone:
#   docker build -t load_balancer .
#   docker run --rm -e DATABASE_URL=postgres://… -e LB_ADMIN_TOKEN=… \
#     -p 127.0.0.1:8080:8080 -p 127.0.0.1:9901:9901 load_balancer
# Arguments after the image name are the binary's: `docker run … load_balancer check-config`.
#
# Both base images are pinned to exact tags, so that a rebuild gets the toolchain and the
# Debian it was tested with; bump them on purpose. The Rust one is the toolchain CI tests
# with, at or above `rust-version` in Cargo.toml; tests/packaging.rs checks that.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src

# Dependencies in a layer of their own: the manifest, the lock file and stub targets are
# enough to build every crate of Cargo.lock, and this layer stays cached until one of those
# two files changes, so a change to src/ rebuilds this crate alone. Stub targets rather
# than cargo-chef: one crate, no extra tool to install and pin, and the stub script is
# tested (tests/packaging.rs).
COPY Cargo.toml Cargo.lock ./
COPY docker/stub-targets.sh docker/stub-targets.sh
RUN sh docker/stub-targets.sh \
 && cargo build --release --locked --bin load_balancer

# Then the sources (the migrations are embedded at compile time). COPY keeps the files'
# own modification times, which can be older than the stubs' build: touching the crate
# roots makes cargo rebuild this crate, never reuse the stub.
COPY src src
COPY migrations migrations
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin load_balancer

FROM debian:bookworm-20260824-slim
LABEL org.opencontainers.image.title="load_balancer" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# The system's roots: TLS to workers ([pools.NAME.tls] without `ca`) and to PostgreSQL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A user of its own, not root. The uid (10001) is above any distribution's range and given
# as a number to USER, so that an orchestrator's "run as non-root" check can verify it.
# /var/lib/load_balancer is where `[database] cache_path` can live (mount a volume there).
RUN groupadd --system --gid 10001 load_balancer \
 && useradd --system --uid 10001 --gid load_balancer --no-create-home \
      --home-dir /var/lib/load_balancer --shell /usr/sbin/nologin load_balancer \
 && install -d -o load_balancer -g load_balancer -m 0750 /var/lib/load_balancer

COPY --from=build /src/target/release/load_balancer /usr/local/bin/load_balancer
COPY docker/config.toml /etc/load_balancer/config.toml
COPY LICENSE-MIT LICENSE-APACHE /usr/share/doc/load_balancer/

USER 10001:10001
WORKDIR /var/lib/load_balancer
# The listener and the admin endpoint of docker/config.toml.
EXPOSE 8080 9901
# SIGTERM drains: in-flight requests get up to 30 s (give `docker stop` a longer timeout).
STOPSIGNAL SIGTERM
# Ready = the admin endpoint's /readyz answers 200 (a ring is loaded, no drain under way);
# the binary checks it itself, so the image needs no curl. LB_ADMIN_TOKEN, from the
# container's environment, is its bearer token.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["load_balancer", "--config", "/etc/load_balancer/config.toml", "healthcheck"]
ENTRYPOINT ["load_balancer", "--config", "/etc/load_balancer/config.toml"]
