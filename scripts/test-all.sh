#!/usr/bin/env bash
# Runs every test of milvus-fleet on a Debian 12 machine, as root: installs what it needs,
# checks format and lints, builds the .deb and .rpm, then runs the unit tests, the CLI
# tests, the package gates (lintian, rpmlint, file lists) and the system tests on real
# systemd test hosts, and the benchmark's quick variant. The last lines are cargo test's
# summaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
start=$SECONDS
# Test hosts are torn down by the tests themselves, also when one fails; this catches
# an interrupted run (Ctrl-C, a CI timeout) too.
trap 'tests/hosts/fleet-hosts down-all' EXIT
step() { printf '\n==> %s (%d s)\n' "$*" $((SECONDS - start)); }

step "prerequisites"
scripts/install-prereqs.sh
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
step "packages"
scripts/build-packages.sh
step "test hosts' root file system, container images, client virtualenv (cached by their inputs)"
tests/hosts/fleet-hosts rootfs
tests/images/build.sh
tests/client/venv.sh
step "benchmarks, quick variants (so the suites cannot rot; figures in target/bench/)"
cargo bench --locked --bench hosts -- --quick
cargo bench --locked --bench client_view -- --quick
cargo bench --locked --bench control_plane -- --quick
step "cargo test, including the package and system tests"
cargo test --locked --no-fail-fast -- --include-ignored
