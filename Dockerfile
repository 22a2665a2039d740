# lifecycle-agent: a static binary in an otherwise empty image.
#
# Build for the machine's architecture, or for several (BuildKit / buildx):
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/lifecycle-agent:0.1.0 --push .
#
# Without access to the Rust image (offline, air-gapped; the test suite does this), build the
# binary on the host and let the `prebuilt` stage copy it instead of the `build` stage:
#   RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
#     cargo build --release --locked --target x86_64-unknown-linux-gnu --target-dir target/static
#   mkdir -p dist/amd64 && cp target/static/x86_64-unknown-linux-gnu/release/lifecycle-agent dist/amd64/
#   DOCKER_BUILDKIT=1 docker build --build-arg BINARY_FROM=prebuilt -t lifecycle-agent:0.1.0 .
#
# BuildKit is required (it builds only the stages the target needs); no `# syntax=` line, so
# nothing is pulled for the frontend.

ARG RUST_VERSION=1.85
# `build` compiles in the Rust image; `prebuilt` takes dist/${TARGETARCH}/lifecycle-agent.
ARG BINARY_FROM=build

# --- build: a static glibc binary (crt-static; the musl target is not used), cross-compiled
# for TARGETARCH on the build machine's own architecture.
FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
WORKDIR /src
# protoc: the containerd and CRI bindings (containerd-client, k8s-cri) compile their .proto
# files at build time.
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-gnu; debarch=amd64; gcc=gcc-x86-64-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu; debarch=arm64; gcc=gcc-aarch64-linux-gnu ;; \
      *) echo "unsupported TARGETARCH=$TARGETARCH (amd64, arm64)" >&2; exit 1 ;; \
    esac; \
    cross=""; \
    if [ "$(dpkg --print-architecture)" != "$debarch" ]; then cross="$gcc libc6-dev-$debarch-cross"; fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends protobuf-compiler $cross; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$target"; \
    echo "$target" > /rust-target
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_STRIP=symbols
# Dependencies first: this layer survives source changes.
COPY Cargo.toml Cargo.lock ./
RUN cargo fetch --locked
COPY src ./src
RUN set -eu; \
    target="$(cat /rust-target)"; \
    cargo build --release --locked --offline --target "$target"; \
    cp "target/$target/release/lifecycle-agent" /lifecycle-agent

# --- prebuilt: a binary built elsewhere (see above), for the same TARGETARCH.
FROM scratch AS prebuilt
ARG TARGETARCH
COPY dist/${TARGETARCH}/lifecycle-agent /lifecycle-agent

FROM ${BINARY_FROM} AS binary

# --- final: nothing but the binary. It needs no libc, no CA bundle (it talks to a unix socket
# and, in a cluster, to the API server by IP with the service account's CA) and no shell.
FROM scratch AS final
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="lifecycle-agent" \
      org.opencontainers.image.description="Per-node container lifecycle agent: restarts, OOM kills, uptime and event history of Docker or Podman containers as Prometheus metrics and a JSON API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binary /lifecycle-agent /usr/local/bin/lifecycle-agent
# Root by default: the runtime socket is root's (root:docker 0660). Run it with every
# capability dropped and a read-only root filesystem; or as a non-root user in the socket's
# group (docker run --user 65532:65532 --group-add <gid>, or the chart's supplementalGroups).
USER 0:0
EXPOSE 9977
ENTRYPOINT ["/usr/local/bin/lifecycle-agent"]
CMD ["run"]
