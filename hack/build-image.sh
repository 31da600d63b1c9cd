#!/usr/bin/env bash
# Build Rekindle's reference function image locally (no registry is needed or used).
#
#   bash hack/build-image.sh            # build (or reuse) the image
#   bash hack/build-image.sh --verify   # ... then import and run it with a private
#                                       #     containerd 2.x and 1.6 (see verify below)
#   bash hack/build-image.sh --force    # rebuild the archive even if its inputs are unchanged
#
# Steps:
#   1. debootstrap --variant=minbase bookworm with python3 into $REKINDLE_CACHE/rootfs/python-fn
#      (reused while its recipe is unchanged), cleaned of apt caches/docs, and its Python
#      stdlib byte-compiled with unchecked-hash .pyc files (the layer has fixed mtimes);
#   2. functions/python-fn/app.py -> /app/app.py in the rootfs;
#   3. hack/oci-image.py packs it into $REKINDLE_CACHE/images/python-fn.oci.tar, an OCI
#      archive named docker.io/rekindle/python-fn:latest. Rebuilt only when app.py, this
#      script, oci-image.py or the rootfs changed (inputs hash in python-fn.oci.tar.inputs).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/hack/build-image.sh"
CACHE=${REKINDLE_CACHE:-/var/cache/rekindle}
MIRROR=${REKINDLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
FN=python-fn
IMAGE=docker.io/rekindle/$FN:latest
ROOTFS=$CACHE/rootfs/$FN
OUT=$CACHE/images/$FN.oci.tar
SUITE=bookworm
# numpy + pandas: the libraries a typical data-handling function imports (most of its
# cold start, ~0.3 s here, and about half of its ~120 MB resident memory)
PACKAGES=python3-minimal,libpython3-stdlib,python3-numpy,python3-pandas
# Bump the trailing number to force a new rootfs when the way it is made changes.
RECIPE="debootstrap suite=$SUITE variant=minbase include=$PACKAGES pyc=unchecked-hash r1"
VERIFY_PORT=${REKINDLE_VERIFY_PORT:-18181}
export LC_ALL=C

log() { echo "==> $*"; }
die() { echo "!!! $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# verification with a private containerd (inner part runs in a private mount namespace)
# ---------------------------------------------------------------------------------------
# Runs as: unshare --mount --propagation private build-image.sh --verify-inner CDIR TMP
# A tmpfs over /run hides the host's /run: containerd's shim sockets (/run/containerd/s),
# runc's state (/run/containerd/runc) and ctr's FIFOs all land in it, so nothing of a
# system containerd (/run/containerd, /var/lib/containerd) is touched.
verify_inner() {
  local cdir=$1 tmp=$2 sock=$2/containerd.sock name=rk-verify-$$ rc=0
  mount -t tmpfs -o mode=0755,size=64m rekindle-private-run /run
  export PATH="$cdir/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
  local cpid=$!
  cleanup_inner() {
    ctr -a "$sock" task kill -s SIGKILL "$name" >/dev/null 2>&1 || true
    ctr -a "$sock" task delete "$name" >/dev/null 2>&1 || true
    ctr -a "$sock" container delete "$name" >/dev/null 2>&1 || true
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
  }
  trap cleanup_inner EXIT
  local i
  for i in $(seq 100); do
    ctr -a "$sock" version >/dev/null 2>&1 && break
    kill -0 "$cpid" 2>/dev/null || { cat "$tmp/containerd.log"; die "containerd exited"; }
    sleep 0.1
  done
  echo "    $(ctr -a "$sock" version | awk '/Server:/ {s=1} s && /Version:/ {print "containerd " $2; exit}')"
  echo "    \$ ctr -a $sock images import $OUT"
  ctr -a "$sock" images import "$OUT" | sed 's/^/      /'
  ctr -a "$sock" images ls -q | grep -qx "$IMAGE" || die "image $IMAGE not listed after import"
  echo "    \$ ctr -a $sock run --rm --net-host --env PORT=$VERIFY_PORT $IMAGE $name"
  local t0 t1
  t0=$(date +%s%N)
  ctr -a "$sock" run --rm --net-host --env "PORT=$VERIFY_PORT" "$IMAGE" "$name" \
      </dev/null >"$tmp/task.out" 2>&1 &
  local rpid=$!
  # wait for the first response, then check the function's behaviour
  python3 - "$VERIFY_PORT" <<'EOF' || rc=1
import json, sys, time, urllib.request
port = int(sys.argv[1]); base = f"http://127.0.0.1:{port}"
deadline = time.time() + 60
while True:
    try:
        first = json.load(urllib.request.urlopen(base + "/", timeout=2)); break
    except OSError:
        if time.time() > deadline: sys.exit("no response from the function within 60 s")
        time.sleep(0.02)
second = json.load(urllib.request.urlopen(base + "/", timeout=5))
health = urllib.request.urlopen(base + "/healthz", timeout=5).read().decode().strip()
inv = json.load(urllib.request.urlopen(urllib.request.Request(base + "/invoke", data=b"x" * 1000), timeout=5))
verify = json.load(urllib.request.urlopen(base + "/verify", timeout=30))
assert first["function"] == "python-fn" and first["state_bytes"] >= 50 << 20, first
assert second["count"] == first["count"] + 1, (first, second)
assert health == "ok", health
assert inv["body_bytes"] == 1000 and inv["count"] == second["count"] + 1, inv
assert verify["state"] == "intact", verify
print(f"      GET / -> {json.dumps(first)}")
print(f"      GET / -> count {second['count']}, /healthz -> {health}, POST /invoke -> {json.dumps(inv)}, /verify -> {verify['state']}")
EOF
  t1=$(date +%s%N)
  [ "$rc" = 0 ] && echo "    first response + checks after $(( (t1 - t0) / 1000000 )) ms (ctr run through containerd)"
  echo "    \$ ctr -a $sock task kill -s SIGTERM $name"
  ctr -a "$sock" task kill -s SIGTERM "$name" || rc=1
  local trc=0
  wait "$rpid" || trc=$?
  sed 's/^/      task: /' "$tmp/task.out"
  [ "$trc" = 0 ] || { echo "    ctr run exited $trc (expected 0 after SIGTERM)"; rc=1; }
  ctr -a "$sock" containers ls -q | grep -qx "$name" && { echo "    container not removed by --rm"; rc=1; }
  trap - EXIT
  cleanup_inner
  [ "$rc" = 0 ] || { echo "    --- containerd log ---"; tail -n 30 "$tmp/containerd.log"; }
  return "$rc"
}

# verify_with DIR-NAME: private containerd from $CACHE/DIR-NAME/usr/bin
verify_with() {
  local cdir=$CACHE/$1 tmp major cfgver
  [ -x "$cdir/usr/bin/containerd" ] || die "$cdir/usr/bin/containerd missing: run hack/setup.sh"
  major=$("$cdir/usr/bin/containerd" --version | awk '{print $3}' | sed 's/^v//; s/\..*//')
  cfgver=2; [ "$major" -ge 2 ] && cfgver=3
  tmp=$(mktemp -d /tmp/rekindle-verify.XXXXXX)
  # root, state and both sockets in the temp dir; no CRI, no NRI, no /opt/containerd.
  cat >"$tmp/config.toml" <<EOF
version = $cfgver
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$tmp/containerd.sock"

[ttrpc]
  address = "$tmp/containerd.sock.ttrpc"
EOF
  log "verify with $1 (private containerd, config $tmp/config.toml)"
  local rc=0
  unshare --mount --propagation private bash "$SELF" --verify-inner "$cdir" "$tmp" || rc=$?
  if [ "$rc" = 0 ]; then
    if [ "${REKINDLE_VERIFY_KEEP:-0}" = 1 ]; then echo "    kept $tmp"; else rm -rf "$tmp"; fi
    log "verify with $1: ok"
  else
    die "verify with $1 failed (files kept in $tmp)"
  fi
}

# ---------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------
build_rootfs() {
  local tmp=$ROOTFS.tmp
  command -v debootstrap >/dev/null || die "debootstrap missing: run hack/setup.sh"
  log "debootstrap $SUITE (minbase + $PACKAGES) into $ROOTFS"
  rm -rf "$tmp"; mkdir -p "$(dirname "$ROOTFS")"
  local t0=$SECONDS
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" \
      >"$CACHE/rootfs/$FN.debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/rootfs/$FN.debootstrap.log"; die "debootstrap failed"; }
  echo "    debootstrap took $((SECONDS - t0)) s"
  # Byte-compile the stdlib with unchecked-hash .pyc files: the image's files all get one
  # fixed mtime, which would make timestamp-checked .pyc files look stale at every start.
  local pylib
  pylib=$(cd "$tmp" && ls -d usr/lib/python3.* | head -n1)
  chroot "$tmp" /usr/bin/python3 -m compileall -q -f \
      --invalidation-mode unchecked-hash "/$pylib" /usr/lib/python3/dist-packages >/dev/null \
    || die "compileall in the rootfs failed"
  # keep it small: no apt caches, lists, docs, man pages, locales, logs
  rm -rf "$tmp"/var/cache/apt/* "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/debconf/*-old \
         "$tmp"/var/lib/dpkg/*-old "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* \
         "$tmp"/usr/share/info/* "$tmp"/usr/share/locale/* "$tmp"/usr/share/lintian \
         "$tmp"/var/log/*.log "$tmp"/var/log/apt/* "$tmp"/tmp/* "$tmp"/var/tmp/*
  # no hint of the build host inside the image
  rm -f "$tmp/etc/hostname"; : > "$tmp/etc/resolv.conf"
  printf '%s\n%s\n' "$RECIPE" "built $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$tmp/.rekindle-rootfs"
  rm -rf "$ROOTFS"; mv "$tmp" "$ROOTFS"
}

build_image() {
  if [ ! -f "$ROOTFS/.rekindle-rootfs" ] || [ "$(head -n1 "$ROOTFS/.rekindle-rootfs")" != "$RECIPE" ]; then
    build_rootfs
  else
    log "rootfs $ROOTFS reused ($(sed -n 2p "$ROOTFS/.rekindle-rootfs"))"
  fi
  cmp -s "$REPO/functions/$FN/app.py" "$ROOTFS/app/app.py" \
    || install -D -m 0644 "$REPO/functions/$FN/app.py" "$ROOTFS/app/app.py"

  local inputs
  inputs=$(cat "$ROOTFS/.rekindle-rootfs" "$REPO/functions/$FN/app.py" "$SELF" \
               "$REPO/hack/oci-image.py" | sha256sum | cut -d' ' -f1)
  if [ "${FORCE:-0}" = 0 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.inputs" 2>/dev/null)" = "$inputs" ]; then
    log "image $IMAGE up to date ($OUT)"
    return 0
  fi
  log "packing $IMAGE into $OUT"
  local t0=$SECONDS
  python3 "$REPO/hack/oci-image.py" --rootfs "$ROOTFS" --out "$OUT" --name "$IMAGE" \
      --cmd /usr/bin/python3 /app/app.py \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env PYTHONUNBUFFERED=1 \
      --workdir /app \
      --label org.opencontainers.image.title=rekindle-$FN > "$OUT.json"
  echo "$inputs" > "$OUT.inputs"
  echo "    packed in $((SECONDS - t0)) s; manifest $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest"])' "$OUT.json")"
}

case "${1:-}" in
  --verify-inner) shift; verify_inner "$@"; exit ;;
esac

VERIFY=0; FORCE=0
for a in "$@"; do
  case "$a" in
    --verify) VERIFY=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, containerd)"
mkdir -p "$CACHE/images" "$CACHE/rootfs"

build_image
log "rootfs $(du -sh "$ROOTFS" | cut -f1), image archive $(du -h "$OUT" | cut -f1) ($OUT)"

if [ "$VERIFY" = 1 ]; then
  verify_with containerd-2
  verify_with containerd-1.6
fi
