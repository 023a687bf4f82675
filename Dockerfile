# The relay's image: `fm-relay serve` with deploy/relay.toml, the configuration of one replica
# behind a load balancer (see deploy/compose.yaml for the whole topology and the README's
# "Deploying replicas"). The API only: the chat page's WASM build needs Trunk; to serve it too,
# build web/dist first (`trunk build --release`) and add `COPY web/dist /srv/web` with
# FM_RELAY_WEB_DIR=/srv/web.
#
#   docker build -t fm-relay .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The release binary alone; the cache mounts keep the registry and target between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fm-relay --bin fm-relay \
    && cp target/release/fm-relay /usr/local/bin/fm-relay

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/fm-relay --create-home fm-relay
COPY --from=build /usr/local/bin/fm-relay /usr/local/bin/fm-relay
COPY deploy/relay.toml /etc/fm-relay/relay.toml
USER fm-relay
WORKDIR /var/lib/fm-relay
ENV FM_RELAY_CONFIG=/etc/fm-relay/relay.toml \
    RUST_LOG=info
EXPOSE 8080
# SIGTERM drains: /healthz turns 503, open streams get server.shutdown_grace_secs to finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fm-relay", "serve"]
