#!/usr/bin/env bash
# Rekindle demo (`make demo`), as root on Debian bookworm:
#   1. installs what is missing and builds the function image (hack/setup.sh, idempotent);
#   2. builds the workspace (release);
#   3. starts a PRIVATE containerd 2.x (root, state and socket in a temp dir);
#   4. runs the reference Python function through io.containerd.rekindle.v2:
#      a one-shot container (exit code and stdout), then the HTTP function cold-started,
#      checkpointed and restored, with the time to first response of each;
#   5. stops everything and checks nothing of it is left.
# Environment: REKINDLE_CONTAINERD=2|1.6 (default 2), REKINDLE_DEMO_PORT (default 18480),
# REKINDLE_KEEP=1 keeps the temp dir (containerd log) for a look afterwards.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
CACHE=${REKINDLE_CACHE:-/var/cache/rekindle}
VERSION=${REKINDLE_CONTAINERD:-2}
PORT=${REKINDLE_DEMO_PORT:-18480}
IMAGE=docker.io/rekindle/python-fn:latest
RUNTIME=io.containerd.rekindle.v2
NS=rekindle-demo

log() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
die() { printf '!!! %s\n' "$*" >&2; exit 1; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

[ "$(id -u)" = 0 ] || die "run as root (containerd, runc and CRIU need it)"

log "set-up: packages, CRIU 4.2 from source, containerd binaries, function image (hack/setup.sh)"
bash hack/setup.sh

log "build: cargo build --release, and the shim statically linked (hack/static-shim.sh)"
cargo build --release --workspace --bins 2>&1 | tail -n 2
SHIM_DIR=$(bash hack/static-shim.sh 2> >(tail -n 1 >&2))

BIN=$CACHE/containerd-$VERSION/usr/bin
[ -x "$BIN/containerd" ] || die "no containerd $VERSION in $BIN: run hack/setup.sh"
TMP=$(mktemp -d /tmp/rekindle-demo.XXXXXX)
SOCK=$TMP/containerd.sock
# The shim (the static build), CRIU 4.2 (/usr/local/sbin, ahead of any other criu) and
# containerd's own binaries.
export PATH="$SHIM_DIR:$REPO/target/release:$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CTR=(ctr -a "$SOCK" -n "$NS")

if [ "$VERSION" = 1.6 ]; then
  cat > "$TMP/config.toml" <<EOF
version = 2
root = "$TMP/root"
state = "$TMP/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
EOF
else
  cat > "$TMP/config.toml" <<EOF
version = 3
root = "$TMP/root"
state = "$TMP/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.grpc.v1.sandbox-controllers"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
EOF
fi

CONTAINERD_PID=
RESTORED_PID=
cleanup() {
  set +e
  for id in $("${CTR[@]}" task ls -q 2>/dev/null); do "${CTR[@]}" task kill -s SIGKILL "$id" >/dev/null 2>&1; done
  sleep 0.3
  for id in $("${CTR[@]}" task ls -q 2>/dev/null); do "${CTR[@]}" task rm -f "$id" >/dev/null 2>&1; done
  for id in $("${CTR[@]}" c ls -q 2>/dev/null); do "${CTR[@]}" c rm "$id" >/dev/null 2>&1; done
  if [ -n "$CONTAINERD_PID" ]; then kill "$CONTAINERD_PID" 2>/dev/null; wait "$CONTAINERD_PID" 2>/dev/null; fi
  if [ -n "$RESTORED_PID" ]; then kill "$RESTORED_PID" 2>/dev/null; wait "$RESTORED_PID" 2>/dev/null; fi
  grep -q " $TMP/" /proc/self/mountinfo && awk -v t="$TMP/" '$5 ~ "^"t {print $5}' /proc/self/mountinfo | sort -r | xargs -r umount -l
  # runc's state root for the namespace (ctr passes no runc options to other runtimes).
  rmdir "/run/containerd/runc/$NS" 2>/dev/null
  if [ "${REKINDLE_KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

log "rekindle-restored (image store) on $TMP/restored.sock"
rekindle-restored --socket "$TMP/restored.sock" --store "$TMP/images" --stage-dir "$TMP/staged" \
  --config /dev/null >"$TMP/restored.log" 2>&1 &
RESTORED_PID=$!
for _ in $(seq 100); do [ -S "$TMP/restored.sock" ] && break; sleep 0.05; done
[ -S "$TMP/restored.sock" ] || die "rekindle-restored did not start; see $TMP/restored.log"
IMG=(rekindle image --restored-socket "$TMP/restored.sock")

# containerd's state (bundles, shim sockets) on a tmpfs, as /run/containerd is on a node
# (/run is a tmpfs on any systemd host; this machine's /tmp is on disk).
mkdir -p "$TMP/state"
mount -t tmpfs -o mode=0711,size=1g rekindle-demo-state "$TMP/state"
log "private containerd $("$BIN/containerd" --version | awk '{print $3}') in $TMP (never the system one)"
# Shims inherit containerd's environment: this is how they find the image store.
REKINDLE_RESTORED_SOCKET="$TMP/restored.sock" \
  containerd --config "$TMP/config.toml" >"$TMP/containerd.log" 2>&1 &
CONTAINERD_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || die "containerd did not start; see $TMP/containerd.log"
"${CTR[@]}" images import "$CACHE/images/python-fn.oci.tar" >/dev/null
say "imported $IMAGE"

log "one-shot container through $RUNTIME"
set +e
out=$("${CTR[@]}" run --rm --runtime "$RUNTIME" "$IMAGE" oneshot /bin/sh -c 'echo "hello from a rekindle container"; exit 3')
rc=$?
set -e
say "stdout: $out"
say "exit code: $rc (the container exited with 3)"
[ "$rc" = 3 ] || die "expected exit code 3"

log "cold start of the Python function (numpy + pandas imports, 48 MB of state, HTTP on 127.0.0.1:$PORT)"
t0=$(date +%s%N)
"${CTR[@]}" run -d --net-host --env "PORT=$PORT" --runtime "$RUNTIME" \
  --annotation io.rekindle.checkpoint.store-as=python-fn "$IMAGE" fn >/dev/null
read -r cold_ms body < <(python3 hack/first-response.py "$t0" "$PORT")
say "first response after ${cold_ms} ms: $body"
body=$(python3 hack/first-response.py "$(date +%s%N)" "$PORT" | cut -d' ' -f2-)
say "second request: $body"

log "checkpoint: ctr container checkpoint --task (the function is paused, dumped by CRIU, resumed)"
t0=$(date +%s%N)
"${CTR[@]}" container checkpoint --task fn rekindle/fn-checkpoint:1 >/dev/null
ck_ms=$(ms_since "$t0")
say "checkpointed in ${ck_ms} ms into the checkpoint image rekindle/fn-checkpoint:1"
say "and stored by the shim in rekindle-restored (io.rekindle.checkpoint.store-as=python-fn):"
"${IMG[@]}" list | sed 's/^/      /'

log "the original stops; ctr container restore --live brings it back from the checkpoint"
"${CTR[@]}" task kill -s SIGKILL fn >/dev/null
sleep 0.3
"${CTR[@]}" task rm fn >/dev/null 2>&1 || true
"${CTR[@]}" c rm fn >/dev/null
t0=$(date +%s%N)
"${CTR[@]}" container restore --live fn rekindle/fn-checkpoint:1 >/dev/null ||
  die "restore failed; see $TMP/containerd.log (REKINDLE_KEEP=1 keeps it)"
read -r restore_ms body < <(python3 hack/first-response.py "$t0" "$PORT")
say "first response after ${restore_ms} ms: $body   <- the counter kept counting"

"${CTR[@]}" task kill -s SIGKILL fn >/dev/null
sleep 0.3
"${CTR[@]}" task rm fn >/dev/null 2>&1 || true
"${CTR[@]}" c rm fn >/dev/null

log "Rekindle's path: the image staged in memory, a new container restored from it (io.rekindle.image)"
t0=$(date +%s%N)
"${IMG[@]}" stage python-fn >/dev/null
stage_ms=$(ms_since "$t0")
say "staged (decompressed and verified into a tmpfs) in ${stage_ms} ms"
t0=$(date +%s%N)
"${CTR[@]}" run -d --net-host --env "PORT=$PORT" --runtime "$RUNTIME" \
  --annotation io.rekindle.image=python-fn --annotation io.rekindle.fallback=cold \
  "$IMAGE" fn-staged >/dev/null
read -r staged_ms body < <(python3 hack/first-response.py "$t0" "$PORT")
say "first response after ${staged_ms} ms: $body"

log "summary (one run each, not a benchmark: see bash hack/bench.sh)"
printf '    %-34s %8s\n' "cold start, to first response" "${cold_ms} ms"
printf '    %-34s %8s\n' "checkpoint (runc + CRIU)" "${ck_ms} ms"
printf '    %-34s %8s\n' "restore (ctr restore --live)" "${restore_ms} ms"
printf '    %-34s %8s\n' "restore from the staged image" "${staged_ms} ms"
direct=$(grep -c 'restored by the direct engine' "$TMP/containerd.log" || true)
grep -o 'restored by the direct engine[^"]*' "$TMP/containerd.log" | sed 's/^/    shim: /' || true
say "${direct:-0} of the 2 restores ran through the shim's direct engine (CRIU driven through"
say "libcriu from a criu swrk prepared at Create, lazy pages for the stored image, no runc"
say "process); any other through runc restore, its reason in containerd's log (REKINDLE_KEEP=1 keeps it)."
say "For p50/p99 side by side with runc restore and cold start: bash hack/bench.sh"

log "clean-up"
cleanup
trap - EXIT
left=$(pgrep -fc "containerd-shim-rekindle-v2 .*-address $SOCK" || true)
say "shims left: ${left:-0}"
