# syntax=docker/dockerfile:1
#
# overlay-agent container image, built from source.
#
#   docker build -t overlay-agent:0.1.0 .
#
# Stage 1 builds exactly as `cargo xtask setup` + `cargo xtask build --release`
# do on a Debian 12 machine (see xtask/src/setup.rs and
# shared/reference/toolchain.md):
#   - stable Rust (the image's 1.95) builds the agent;
#   - a nightly whose LLVM major matches bpf-linker's builds the BPF object
#     (bpfel-unknown-none, -Z build-std=core, so it needs rust-src);
#   - bpf-linker is built from crates.io against Debian's llvm-22-dev and
#     libpolly-22-dev (bookworm-security), with LLVM_PREFIX set;
#   - protoc for etcd-client's build.
# The build runs `rustup run nightly ...`: the pinned nightly is installed
# under its dated name and made the `nightly` toolchain with a symlink
# (rustup refuses to `toolchain link` the name "nightly").
#
# Stage 2 is debian:bookworm-slim with what the agent runs at run time:
# iptables (behind a wrapper that picks the host's backend, legacy or
# nf_tables), nft (net-conf EnableNFTables), iproute2, and etcdctl
# (etcd-client) for the DaemonSet's config-seeding init container and for
# operators.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# The nightly and the LLVM major must agree: `rustc +nightly -vV` of this
# nightly reports LLVM 22. Change both together.
ARG RUST_NIGHTLY=nightly-2026-05-19
ARG LLVM_MAJOR=22
ENV DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*

RUN set -eux; \
    host="$(rustc -vV | sed -n 's/^host: //p')"; \
    rustup toolchain install "${RUST_NIGHTLY}" --profile minimal --component rust-src; \
    ln -sfn "${RUST_NIGHTLY}-${host}" "${RUSTUP_HOME}/toolchains/nightly-${host}"; \
    rustup run nightly rustc -vV; \
    if ! rustup run nightly rustc -vV | grep -q "^LLVM version: ${LLVM_MAJOR}\."; then \
        echo "${RUST_NIGHTLY} does not use LLVM ${LLVM_MAJOR}: set RUST_NIGHTLY and LLVM_MAJOR together" >&2; \
        exit 1; \
    fi

RUN LLVM_PREFIX="/usr/lib/llvm-${LLVM_MAJOR}" \
    cargo install bpf-linker --locked --no-default-features --features "llvm-${LLVM_MAJOR}"

WORKDIR /src
COPY . .
# The BPF object first (nightly), then the agent embedding it (stable).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask build --release \
    && install -D -m 0755 target/release/overlay-agent /out/overlay-agent

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        iptables nftables iproute2 etcd-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --chmod=0755 deploy/docker/iptables /usr/local/sbin/iptables
COPY --from=build /out/overlay-agent /usr/local/bin/overlay-agent
# The data path outlives the process: SIGTERM (docker stop, a pod's end)
# exits at once and leaves the BPF programs and maps pinned.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/overlay-agent"]
