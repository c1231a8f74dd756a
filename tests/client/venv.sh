#!/usr/bin/env bash
# Prints the python of a virtualenv with tests/client/requirements.txt installed, made once
# and cached under $FLEET_HOSTS_CACHE by the requirements' hash.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FLEET_HOSTS_CACHE:-/var/cache/milvus-fleet-tests}
venv=$CACHE/venv-$(sha256sum "$HERE/requirements.txt" | cut -c1-16)
if [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv.tmp"
    python3 -m venv "$venv.tmp" >&2
    "$venv.tmp/bin/pip" install -q -r "$HERE/requirements.txt" >&2
    mv "$venv.tmp" "$venv"
fi
echo "$venv/bin/python"
