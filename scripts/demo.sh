#!/usr/bin/env bash
# The demo, on a fresh Debian 12 machine as root: build the milvus-fleet package and the
# container images it needs (locally, from Debian packages and PyPI wheels: no registry),
# boot three test hosts (real systemd, Docker inside, each with its own IP on a private
# bridge), `milvus-fleet init` on h1, and let h2 and h3 join through cloud-init alone (a
# NoCloud seed, then a boot). Then `milvus-fleet status`, and a real Milvus client inserts
# vectors and searches them through the load balancer. The hosts stay up for you to look
# around; the last lines say how to connect your own client and how to tear down.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# The harness's default prefix and subnet, so the commands printed at the end work as they are.
unset FLEET_HOSTS_PREFIX FLEET_HOSTS_SUBNET FLEET_HOSTS_STATE
export FLEET_HOSTS_PACKAGES="docker.io cloud-init" FLEET_HOSTS_DOCKER=1
HOSTS=tests/hosts/fleet-hosts
PKG=/var/cache/milvus-fleet/milvus-fleet.deb
say() { printf '\n==> %s\n' "$*"; }
quiet() { # runs a command, showing its output only when it fails
    local log; log=$(mktemp); if ! "$@" >"$log" 2>&1; then cat "$log" >&2; rm -f "$log"; return 1; fi; rm -f "$log"
}

say "installing prerequisites"
scripts/install-prereqs.sh
say "building the .deb"
deb=$(scripts/build-packages.sh | grep '\.deb$')
say "building the container images (cached after the first run)"
images=$(tests/images/build.sh)
python=$(tests/client/venv.sh)

say "booting 3 test hosts with Docker and cloud-init"
$HOSTS down 2>/dev/null || true
$HOSTS up 3
addr() { $HOSTS ip "$1"; }
for host in h1 h2 h3; do
    # What a VM image or a mounted medium would bring: the package file and the images.
    $HOSTS copy-in "$host" "$deb" "$PKG"
    $HOSTS copy-in "$host" /usr/libexec/docker/cli-plugins/docker-compose /usr/libexec/docker/cli-plugins/docker-compose 0755
    quiet $HOSTS exec "$host" sh -c 'for i in $(seq 1 100); do docker info >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1'
    while read -r name tarball; do
        [ "$name" = local/seaweedfs:test ] && [ "$host" != h1 ] && continue
        $HOSTS copy-in "$host" "$tarball" /var/tmp/image.tar
        quiet $HOSTS exec "$host" sh -c 'docker load -i /var/tmp/image.tar && rm /var/tmp/image.tar'
    done <<<"$images"
done

say "h1: the site's S3 service (SeaweedFS), which the cluster uses as its object storage"
s3_key=demo-access-key
s3_secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
$HOSTS exec h1 sh -c "umask 077; mkdir -p /etc/site-s3 && cat > /etc/site-s3/compose.yaml" <<EOF
name: site-s3
services:
  s3:
    image: local/seaweedfs:test
    network_mode: host
    environment:
      WEED_IP: "$(addr h1)"
      S3_ACCESS_KEY: "$s3_key"
      S3_SECRET_KEY: "$s3_secret"
    volumes:
      - /var/lib/site-s3:/data
EOF
$HOSTS exec h1 sh -c 'cat > /etc/systemd/system/site-s3.service' <<'EOF'
[Unit]
Description=the site's S3 service (demo)
Requires=docker.service
After=docker.service
[Service]
ExecStart=/usr/bin/docker compose --file /etc/site-s3/compose.yaml up --no-color --exit-code-from s3
ExecStop=/usr/bin/docker compose --file /etc/site-s3/compose.yaml down
[Install]
WantedBy=multi-user.target
EOF
$HOSTS exec h1 sh -c 'systemctl daemon-reload && systemctl enable --now --quiet site-s3'

say "h1: apt install the package, write fleet.toml, milvus-fleet init"
quiet $HOSTS exec h1 sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 $PKG"
$HOSTS exec h1 sh -c 'cat > /etc/milvus-fleet/fleet.toml' <<EOF
[cluster]
name = "demo"
# One Milvus server on one node, the others standing by (the Milvus image built here is
# the standalone server; the distributed roles are configuration, not code).
topology = "standalone-ha"

[object_storage]
kind = "s3"
endpoint = "$(addr h1):9000"
bucket = "milvus-demo"

[images]
etcd = "local/etcd:test"
nginx = "local/nginx:test"
milvus = "local/milvus:test"
EOF
printf 'MILVUS_FLEET_S3_ACCESS_KEY_ID=%s\nMILVUS_FLEET_S3_SECRET_ACCESS_KEY=%s\n' "$s3_key" "$s3_secret" |
    $HOSTS exec h1 sh -c 'umask 077; cat > /etc/milvus-fleet/credentials/object-storage'
$HOSTS exec h1 milvus-fleet init --name h1 --address "$(addr h1)" --roles storage,compute >/dev/null

say "h2, h3: cloud-init user-data from \`milvus-fleet cloud-init\`, a NoCloud seed, a boot"
for host in h2 h3; do
    # One single-use token per VM; the user-data goes straight into the seed (0600).
    $HOSTS exec h1 milvus-fleet cloud-init --server "$(addr h1)" --role storage,compute \
        --ttl 30m --package-file "$PKG" 2>/dev/null |
        $HOSTS exec "$host" sh -c 'umask 077; mkdir -p /var/lib/cloud/seed/nocloud && cat > /var/lib/cloud/seed/nocloud/user-data'
    printf 'instance-id: demo-%s\nlocal-hostname: %s\n' "$host" "$host" |
        $HOSTS exec "$host" sh -c 'cat > /var/lib/cloud/seed/nocloud/meta-data'
    # The test hosts have no `locales` package; a real image sets its locale like this.
    echo 'locale: C.UTF-8' | $HOSTS exec "$host" sh -c 'cat > /etc/cloud/cloud.cfg.d/90-locale.cfg'
    $HOSTS reboot "$host"
done

say "waiting for h2 and h3 to join (no commands on them)"
for i in $(seq 1 300); do
    up=$($HOSTS exec h1 milvus-fleet status --json 2>/dev/null |
        python3 -c 'import json,sys; print(sum(n["daemon"]=="up" for n in json.load(sys.stdin).get("nodes",[])))' 2>/dev/null || echo 0)
    [ "$up" = 3 ] && break
    [ "$i" = 300 ] && { echo "h2 and h3 did not join in 5 minutes; see: $HOSTS exec h2 journalctl -u milvus-fleet-join" >&2; exit 1; }
    sleep 1
done
say "milvus-fleet status (h3)"
$HOSTS exec h3 milvus-fleet status

say "a Milvus client logs in as root, inserts 1000 vectors and searches them through h2's load balancer"
ns=mfh-sw   # the hosts' bridge network (the harness's switch namespace)
# Milvus' root password: made by init, kept root-only on the nodes that run Milvus.
MILVUS_PASSWORD=$($HOSTS exec h1 cat /etc/milvus-fleet/credentials/milvus)
export MILVUS_PASSWORD
for i in $(seq 1 60); do
    if ip netns exec "$ns" "$python" tests/client/vectors.py "$(addr h2)" 19537 write; then break; fi
    [ "$i" = 60 ] && exit 1
    sleep 5
done

cat <<MSG

The cluster is up:
$($HOSTS list | sed 's/^/  /')
Connect your own client to any node's load balancer, port 19537 (from the hosts' network),
as root with the password kept root-only in /etc/milvus-fleet/credentials/milvus:
  export MILVUS_PASSWORD=\$($HOSTS exec h1 cat /etc/milvus-fleet/credentials/milvus)
  ip netns exec $ns $python -c 'import os; from pymilvus import connections; connections.connect(host="$(addr h2)", port=19537, user="root", password=os.environ["MILVUS_PASSWORD"])'
Look around:
  $HOSTS exec h1 milvus-fleet status          # the cluster as h1 sees it
  $HOSTS exec h1 milvus-fleet token list      # join tokens (h2's and h3's are used up)
  $HOSTS exec h2 journalctl -u milvus-fleet-join   # how h2 joined at boot
  systemctl -M mfh-h1 list-units 'milvus-fleet*'   # the units on h1, from here
  $HOSTS exec h1 bash                         # a root shell on h1
Tear down:
  $HOSTS down
MSG
