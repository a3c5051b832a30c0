# Multi-stage build: compile in the Rust image, run in a small Debian image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
# The page and the JavaScript client are built into the binary (rust-embed).
COPY static ./static
COPY loadtest ./loadtest
RUN cargo build --release --locked -p pushgate

FROM debian:bookworm-slim
# librdkafka's OpenSSL and libcurl are linked in statically (the default
# `bundled-tls` feature); ca-certificates is the CA bundle Kafka TLS trusts
# when kafka.tls.ca_file is not set.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pushgate --create-home pushgate
COPY --from=build /src/target/release/pushgate /usr/local/bin/pushgate
COPY config /etc/pushgate
USER pushgate
WORKDIR /var/lib/pushgate
ENV PUSHGATE_DATA_DIR=/var/lib/pushgate/data
EXPOSE 8080
# The demo config listens on loopback; in a container pass --listen 0.0.0.0:8080
# with your own --config (anonymous publish on a network address logs a warning).
ENTRYPOINT ["/usr/local/bin/pushgate"]
CMD ["--config", "/etc/pushgate/pushgate.toml", "--listen", "0.0.0.0:8080"]
