#!/usr/bin/env bash
# Every test Rekindle has, on a fresh Debian bookworm machine as root:
# set-up (idempotent), lints, unit tests, and the integration suite against a
# private containerd 2.x and then 1.6 (started and stopped by the tests), then the
# restore stories with the static shim the bench and nodes use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "==> $*"; }

bash hack/setup.sh
# A clean build of everything below takes ~5 GB in target/; rustc dies without a
# clear message when the disk fills, so say it first.
free_gb=$(df -P -BG . | awk 'NR==2 { sub("G", "", $4); print $4 }')
if [ "${free_gb:-0}" -lt 8 ]; then
  echo "!!! only ${free_gb} GB free on $(df -P . | awk 'NR==2 { print $6 }'): a clean build needs ~5 GB (free space, or run cargo clean)" >&2
fi
# A clean clone gains nothing from incremental compilation, only gigabytes in target/.
if [[ "${CI:-}" == true ]]; then export CARGO_INCREMENTAL=0; fi
# CRIU 4.2 from setup.sh lives in /usr/local/sbin and must win over any other.
export PATH="/usr/local/sbin:/usr/local/bin:$PATH"

log "lint: cargo fmt --check, cargo clippy -D warnings, cargo doc -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Broken doc links and stray HTML in doc comments (the docs a newcomer reads first).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

log "build"
cargo build --workspace --bins

log "node image (from this debug build, for tests/node_image.rs)"
bash hack/build-node-image.sh --profile debug
export REKINDLE_NODE_IMAGE=${REKINDLE_CACHE:-/var/cache/rekindle}/images/rekindle-node-debug.oci.tar

log "unit tests and integration tests (containerd 2.x)"
REKINDLE_CONTAINERD=2 cargo test --workspace --no-fail-fast

log "integration tests again against containerd 1.6"
REKINDLE_CONTAINERD=1.6 cargo test --test integration --no-fail-fast

# The shim as the bench, the demo and nodes run it: statically linked (hack/static-shim.sh).
log "restore stories again with the static shim (containerd 2.x)"
REKINDLE_SHIM_DIR=$(bash hack/static-shim.sh) REKINDLE_CONTAINERD=2 \
  cargo test --test integration --no-fail-fast -- checkpoint_restore:: function:: exec:: working_set::
