#!/usr/bin/env bash
# The long soak (tests/soak.rs), as root on Debian bookworm: the whole node (containerd,
# runc, CRIU, rekindle-restored, the agent with its gateway) under a bounded mixed load
# on loopback for REKINDLE_SOAK_SECS (default 600), then every answer, the memory budget
# and the leak counts checked. It
#   1. installs what is missing (hack/setup.sh, idempotent);
#   2. builds the binaries (debug, as the tests use them);
#   3. runs the soak, which starts its own containerd and rekindle-restored (temp dirs,
#      never the system's) and stops them at the end;
#   4. writes the summary table to bench-results/soak.md (REKINDLE_SOAK_OUT).
# `make test` runs the same soak for 60 s.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

log() { printf '==> %s\n' "$*"; }
die() { printf '!!! %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (containerd, runc and CRIU need it)"

log "set-up (hack/setup.sh)"
bash hack/setup.sh
export PATH="/usr/local/sbin:/usr/local/bin:$PATH"

log "build"
cargo build --workspace --bins

export REKINDLE_SOAK_SECS="${REKINDLE_SOAK_SECS:-600}"
mkdir -p bench-results
export REKINDLE_SOAK_OUT="${REKINDLE_SOAK_OUT:-$REPO/bench-results/soak.md}"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
log "soak: ${REKINDLE_SOAK_SECS} s of load (commit $commit)"
cargo test --test soak -- --nocapture
log "summary: $REKINDLE_SOAK_OUT"
