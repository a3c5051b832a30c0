# Multi-stage build: compile in the Rust image, run in a small Debian image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY loadtest ./loadtest
RUN cargo build --release --locked -p pushgate

FROM debian:bookworm-slim
# librdkafka is linked against Debian's OpenSSL and libcurl (Kafka TLS, SASL, OIDC);
# ca-certificates is the CA bundle it trusts when kafka.tls.ca_file is not set.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pushgate --create-home pushgate
COPY --from=build /src/target/release/pushgate /usr/local/bin/pushgate
COPY static /usr/share/pushgate/static
COPY config /etc/pushgate
USER pushgate
WORKDIR /var/lib/pushgate
ENV PUSHGATE__SERVER__STATIC_DIR=/usr/share/pushgate/static \
    PUSHGATE_DATA_DIR=/var/lib/pushgate/data
EXPOSE 8080
# The demo config listens on loopback; in a container pass --listen 0.0.0.0:8080
# with your own --config (anonymous publish on a network address logs a warning).
ENTRYPOINT ["/usr/local/bin/pushgate"]
CMD ["--config", "/etc/pushgate/pushgate.toml", "--listen", "0.0.0.0:8080"]
