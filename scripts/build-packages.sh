#!/usr/bin/env bash
# Builds the release binary, its man page and completions, then the .deb and the .rpm.
# Prints the two package paths. Needs cargo-deb and cargo-generate-rpm
# (scripts/install-prereqs.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
rm -rf target/assets
target/release/milvus-fleet gen-assets target/assets
gzip -9nf target/assets/milvus-fleet.1

# Reproducible packages: file times and build time come from the last commit. Set only
# for packaging: build scripts (ring's) rerun when it changes, so it stays out of the build.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH

rm -rf target/debian target/generate-rpm
cargo deb --no-build --locked >/dev/null            # strips its own copy of the binary
strip --strip-unneeded --remove-section=.comment --remove-section=.note target/release/milvus-fleet
cargo generate-rpm --source-date "$SOURCE_DATE_EPOCH" >/dev/null

ls target/debian/*.deb target/generate-rpm/*.rpm
