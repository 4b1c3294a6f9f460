# Portcullis container image: `docker build -t portcullis .`
# Build stage: the release binary (pingora's zlib-ng build needs cmake and a C compiler).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
RUN cargo build --release --locked --bin portcullis \
 && strip target/release/portcullis

# Runtime stage: the binary, CA certificates (JWKS, TLS upstreams, rediss://, Postgres TLS),
# and an unprivileged user. No shell tools are needed by the gateway.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/portcullis --create-home portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
# The default configuration location; mount a ConfigMap or volume over /etc/portcullis.
COPY deploy/container/gateway.yaml /etc/portcullis/gateway.yaml
USER 10001:10001
WORKDIR /var/lib/portcullis
# 8080: agents' calls. 9901: admin (/healthz, /readyz, /metrics, approvals): keep it private.
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/gateway.yaml"]
