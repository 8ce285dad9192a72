# syntax=docker/dockerfile:1
# The Shard Oracle, serving its web app. Multi-stage: cargo-chef caches the dependency build in
# its own layer, the web app is built with the project's own set-up script, and the runtime is
# a slim Debian whose glibc (bookworm, 2.36) matches the builder's.
#
#   docker build -t shard-oracle .
#   docker run -p 8080:8080 -p 9090-9091:9090-9091 -p 9092:9092/udp -v shard-state:/var/lib/shard shard-oracle
#
# Models are read from /models (the image carries the default pair there; mount your own
# read-only over it); state (libp2p key, trust store) lives in the /var/lib/shard volume.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --version 0.1.73 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# The web app's build tools: node (npm's binaryen for wasm-opt); scripts/setup.sh --web adds
# the wasm32 target, trunk and the wasm-bindgen-cli that matches Cargo.lock.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/*
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p shard-oracle -p shard-scout
COPY . .
ENV SHARD_CACHE=/root/.cache/shard
RUN scripts/setup.sh --web \
 && CARGO_TARGET_DIR=/src/target scripts/build-web.sh \
 && cargo build --release --locked -p shard-oracle -p shard-scout

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/shard --create-home shard
COPY --from=builder /src/target/release/shard-oracle /src/target/release/shard-scout /usr/local/bin/
COPY --from=builder /src/dist /usr/share/shard/web
COPY --chown=root:root models/*.gguf /models/
USER 10001:10001
WORKDIR /var/lib/shard
VOLUME ["/var/lib/shard"]
ENV SHARD_HOST=0.0.0.0 \
    SHARD_PORT=8080 \
    SHARD_MODEL=/models/shard-target-bitnet-tq2_0.gguf \
    SHARD_SCOUT_MODEL=/models/shard-draft-llama-f16.gguf \
    SHARD_WEB_DIR=/usr/share/shard/web \
    SHARD_STATE_DIR=/var/lib/shard
# HTTP; libp2p TCP (native Scouts), WebSocket and webrtc-direct (browsers).
EXPOSE 8080 9090 9091 9092/udp
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["/usr/local/bin/shard-oracle", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/shard-oracle"]
