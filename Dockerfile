# syntax=docker/dockerfile:1
#
# The els-bridge image: one binary for every subcommand (worker, send, validate, publish,
# dlq, simulate), on a distroless base, running as a non-root numeric user, and fit for a
# read-only root filesystem.
#
#   docker build -t els-bridge .
#   docker run --rm els-bridge --help
#   docker run --rm --read-only -v "$PWD/my.toml:/etc/els-bridge/els-bridge.toml:ro" els-bridge   # worker
#   docker run --rm --read-only -v "$PWD:/data" els-bridge validate /data/events.jsonl
#
# Nothing is written at run time except by `send`: its token file (only when no [amqp]
# section is configured; with one, the fleet's token in the broker is used) goes to
# $XDG_STATE_HOME = /tmp/els-bridge (give the container a tmpfs or a volume at /tmp, or set
# platform.token_file to a file on a mounted volume to keep it between runs), and its
# FILE.rejects.jsonl next to each input file (mount the inputs writable). See
# docs/deployment.md.

ARG RUST_VERSION=1

# --- build -------------------------------------------------------------------------------
# Dependencies are compiled in a layer of their own with cargo-chef: it depends only on the
# dependency graph (Cargo.toml, Cargo.lock, the list of targets), so changing the sources
# rebuilds the crate alone. The registry is also a BuildKit cache.
FROM rust:${RUST_VERSION}-bookworm AS chef
# STRIP=debuginfo keeps symbols for readable panics and drops the debug line tables that
# the release profile keeps (72 MB -> 18 MB).
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

# 1. The recipe: what the dependency layer depends on.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# 2. The dependencies, then the crate itself.
FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked --bin els-bridge --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked --bin els-bridge \
    && install -D -m 0755 target/release/els-bridge /out/els-bridge \
    && /out/els-bridge --version

# --- run ---------------------------------------------------------------------------------
# glibc, libgcc, CA certificates and tzdata; no shell, no package manager. The :nonroot
# tag runs as UID/GID 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="els-bridge" \
      org.opencontainers.image.description="Reports hospital stock movements to the Jiangsu provincial procurement platform (ELS7001-ELS7007) through RabbitMQ workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder --chown=0:0 --chmod=0755 /out/els-bridge /usr/local/bin/els-bridge

ENV ELS_BRIDGE_CONFIG=/etc/els-bridge/els-bridge.toml \
    XDG_STATE_HOME=/tmp/els-bridge \
    RUST_LOG=info

# numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd
USER 65532:65532

# /healthz, /readyz and /metrics of `els-bridge worker` ([http] listen)
EXPOSE 9464

ENTRYPOINT ["els-bridge"]
CMD ["worker"]
