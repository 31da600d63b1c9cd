#!/usr/bin/env bash
# The restore benchmark (benches/restore.rs), as root on Debian bookworm: time to first
# response of the reference function, cold start vs `runc restore` vs Rekindle's restores,
# side by side in one run. It
#   1. installs what is missing (hack/setup.sh, idempotent: CRIU 4.2, containerd, image);
#   2. builds the shim, rekindle-restored and the CLI in release, and the shim again as
#      statically linked, as nodes run it (hack/static-shim.sh), which the bench uses;
#   3. runs the bench, which starts its own containerd and rekindle-restored (temp dirs,
#      never the system's) and stops them at the end;
#   4. writes bench-results/restore.md (the table) and bench-results/restore.json.
# Environment: REKINDLE_BENCH_ITERATIONS (per mode, default 30), REKINDLE_CONTAINERD
# (2 or 1.6, default 2), REKINDLE_BENCH_OUT (default bench-results);
# REKINDLE_BENCH_AB_CRIU=<criu A>,<criu B> compares two CRIU builds on mode (4) instead
# and writes ab.md (see benches/restore.rs and the README); REKINDLE_BENCH_AB_SHIM=<shim A>,
# <shim B> two builds of the shim binary.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

log() { printf '==> %s\n' "$*"; }
die() { printf '!!! %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (containerd, runc and CRIU need it)"

log "set-up (hack/setup.sh)"
bash hack/setup.sh
# CRIU 4.2 from setup.sh lives in /usr/local/sbin and must win over any other.
export PATH="/usr/local/sbin:/usr/local/bin:$PATH"

log "build (release): shim, rekindle-restored, rekindle"
cargo build --release --workspace --bins
log "build: the shim statically linked (hack/static-shim.sh), the one the bench runs"
REKINDLE_SHIM_DIR=$(bash hack/static-shim.sh)
export REKINDLE_SHIM_DIR

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The results of an earlier run (bench-results/) are not a change to the code measured.
if [ -n "$(git status --porcelain --untracked-files=no -- . ':!bench-results' 2>/dev/null)" ]; then
  commit="$commit (with uncommitted changes)"
fi
export REKINDLE_BENCH_COMMIT="$commit"
export REKINDLE_BENCH_OUT="${REKINDLE_BENCH_OUT:-$REPO/bench-results}"

log "bench: ${REKINDLE_BENCH_ITERATIONS:-30} iterations per mode, containerd ${REKINDLE_CONTAINERD:-2}"
cargo bench --bench restore

log "results: $REKINDLE_BENCH_OUT/restore.md and restore.json"
