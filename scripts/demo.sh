#!/usr/bin/env bash
# The demo, on a fresh Debian 12 machine as root: build the milvus-fleet package from this
# checkout, boot three local test hosts (real systemd, each with its own IP on a private
# bridge), install the package on each with apt and start the daemon. The hosts stay up
# for you to look around; the last lines say how, and how to tear them down.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# The harness's default prefix and subnet, so the commands printed at the end work as they are.
unset FLEET_HOSTS_PREFIX FLEET_HOSTS_SUBNET FLEET_HOSTS_STATE
HOSTS=tests/hosts/fleet-hosts
say() { printf '\n==> %s\n' "$*"; }

say "installing prerequisites"
scripts/install-prereqs.sh
say "building the .deb and .rpm"
packages=$(scripts/build-packages.sh)
deb=$(echo "$packages" | grep '\.deb$')
say "booting 3 test hosts"
$HOSTS down 2>/dev/null || true
$HOSTS up 3
for host in h1 h2 h3; do
    say "$host: apt install $(basename "$deb"), systemctl start milvus-fleet"
    $HOSTS copy-in "$host" "$deb" /var/tmp/milvus-fleet.deb
    if ! $HOSTS exec "$host" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q /var/tmp/milvus-fleet.deb && rm /var/tmp/milvus-fleet.deb' >/tmp/milvus-fleet-demo-apt.log 2>&1; then
        cat /tmp/milvus-fleet-demo-apt.log >&2; exit 1
    fi
    $HOSTS exec "$host" systemctl start milvus-fleet
done
say "milvus-fleet on h1"
$HOSTS exec h1 systemctl --no-pager --lines=0 status milvus-fleet
$HOSTS exec h1 journalctl --no-pager -u milvus-fleet -o short-precise
say "milvus-fleet status on h2 (the local API socket)"
$HOSTS exec h2 milvus-fleet status
cat <<MSG

The hosts are up (the daemons wait for a cluster: \`milvus-fleet init\` arrives in a later release):
$($HOSTS list | sed 's/^/  /')
Look around:
  $HOSTS exec h1 bash                         # a root shell on h1
  systemctl -M mfh-h2 status milvus-fleet              # systemd on h2, from here
  $HOSTS exec h3 journalctl -u milvus-fleet   # its journal
  $HOSTS exec h1 milvus-fleet config check    # the configuration h1 runs with
  $HOSTS exec h2 milvus-fleet status          # its daemon, over the local API socket
Tear down:
  $HOSTS down
MSG
