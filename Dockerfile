FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin load_balancer

FROM debian:bookworm-slim
COPY --from=build /src/target/release/load_balancer /usr/local/bin/load_balancer
COPY docker/config.toml /etc/load_balancer/config.toml
EXPOSE 8080 9901
ENTRYPOINT ["load_balancer", "--config", "/etc/load_balancer/config.toml"]
