#!/usr/bin/env bash
# Build Rekindle's node image (what deploy/node-daemonset.yaml runs) as an OCI archive,
# locally: no registry is needed or used.
#
#   bash hack/build-node-image.sh           # build (or reuse) the image
#   bash hack/build-node-image.sh --force   # repack the archive even if its inputs are unchanged
#   bash hack/build-node-image.sh --build   # run `cargo build --release --workspace --bins` first
#   bash hack/build-node-image.sh --profile debug
#                                           # from target/debug into rekindle-node-debug.oci.tar:
#                                           # what hack/test.sh packs for tests/node_image.rs
#                                           # (no release build needed), never for a node
#
# Output: $REKINDLE_CACHE/images/rekindle-node.oci.tar (default cache /var/cache/rekindle),
# named docker.io/rekindle/node:<workspace version> and docker.io/rekindle/node:latest.
# Load it into a node's containerd with `ctr -n k8s.io images import <archive>`.
#
# Contents:
#   - a debootstrap'd bookworm minbase rootfs in $REKINDLE_CACHE/rootfs/rekindle-node, with
#     only the Debian packages that hold the shared libraries the binaries below need
#     (found with ldd, mapped with dpkg -S); reused while that package list is unchanged;
#   - the release binaries (target/release; built when one is missing) in /usr/local/bin:
#     containerd-shim-rekindle-v2 rekindle-criu-tar rekindle-restored rekindle-agent
#     rekindle rekindle-extender; the first two as the static build of
#     hack/static-shim.sh, as nodes run them (containerd execs the shim on every
#     container start; see the README's benchmark); --profile debug packs target/debug's;
#   - the patched CRIU hack/setup.sh installs, at the same paths: /usr/local/sbin/criu and
#     /usr/local/lib/libcriu.so* (ld.so.cache refreshed in the rootfs).
#     rekindle-restored runs it for `criu --version` (the version it records in and checks
#     against every checkpoint image): the node's own CRIU, which the shim runs, must be
#     the same build.
# Not in it: runc, iptables/nftables and CNI plugins. Neither daemon checkpoints or
# restores itself: containerd runs the shim (and the shim runc/CRIU) on the host, so
# CRIU's network lock and runc are the host's concern.
#
# Deterministic: hack/oci-image.py packs with fixed mtimes and sorted entries, so the same
# rootfs, binaries and CRIU give the same digests; a run whose inputs (hashes of all of
# them, this script and oci-image.py) match $OUT.inputs reuses the archive.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/hack/build-node-image.sh"
CACHE=${REKINDLE_CACHE:-/var/cache/rekindle}
MIRROR=${REKINDLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
NAME=rekindle-node
REPOSITORY=docker.io/rekindle/node
ROOTFS=$CACHE/rootfs/$NAME
SUITE=bookworm
BINARIES=(containerd-shim-rekindle-v2 rekindle-criu-tar rekindle-restored rekindle-agent
          rekindle rekindle-extender)
CRIU=/usr/local/sbin/criu
export LC_ALL=C

log() { echo "==> $*"; }
die() { echo "!!! $*" >&2; exit 1; }

FORCE=0; BUILD=0; PROFILE=release; next_profile=0
for a in "$@"; do
  if [ "$next_profile" = 1 ]; then PROFILE=$a; next_profile=0; continue; fi
  case "$a" in
    --force) FORCE=1 ;;
    --build) BUILD=1 ;;
    --profile) next_profile=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done
case "$PROFILE" in
  release) OUT=$CACHE/images/$NAME.oci.tar; CARGO_PROFILE=(--release) ;;
  debug) OUT=$CACHE/images/$NAME-debug.oci.tar; CARGO_PROFILE=() ;;
  *) die "--profile release|debug, not $PROFILE" ;;
esac
TARGET=${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot)"
mkdir -p "$CACHE/images" "$CACHE/rootfs"

# ---------------------------------------------------------------------------------------
# inputs: release binaries and the installed CRIU
# ---------------------------------------------------------------------------------------
# Where binary $1 comes from: the static shim and its tar helper for a release image.
STATIC=(containerd-shim-rekindle-v2 rekindle-criu-tar)
SHIM_DIR=
src_of() {
  if [ -n "$SHIM_DIR" ] && [[ " ${STATIC[*]} " == *" $1 "* ]]; then
    echo "$SHIM_DIR/$1"
  else
    echo "$TARGET/$1"
  fi
}
missing=0
for b in "${BINARIES[@]}"; do [ -x "$TARGET/$b" ] || missing=1; done
if [ "$BUILD" = 1 ] || [ "$missing" = 1 ]; then
  log "cargo build ${CARGO_PROFILE[*]} --workspace --bins"
  (cd "$REPO" && cargo build "${CARGO_PROFILE[@]}" --workspace --bins)
fi
if [ "$PROFILE" = release ]; then
  log "the shim statically linked (hack/static-shim.sh; up to date unless its sources changed)"
  SHIM_DIR=$(bash "$REPO/hack/static-shim.sh")
fi
for b in "${BINARIES[@]}"; do [ -x "$(src_of "$b")" ] || die "$(src_of "$b") missing after the build"; done
[ -x "$CRIU" ] || die "$CRIU missing: run hack/setup.sh"
mapfile -t LIBCRIU < <(cd /usr/local/lib && ls libcriu.so.* 2>/dev/null | sort)
[ "${#LIBCRIU[@]}" -gt 0 ] || die "/usr/local/lib/libcriu.so.* missing: run hack/setup.sh"
CRIU_VERSION=$("$CRIU" --version | awk '/^Version:/ {print $2; exit}')
VERSION=$("$TARGET/rekindle" --version | awk '{print $2}')
[ -n "$VERSION" ] || die "cannot tell the version from $TARGET/rekindle --version"

# The Debian packages holding the shared libraries (other than /usr/local's libcriu)
# that the binaries and CRIU load.
packages_for_libs() {
  local f
  for f in "$@"; do ldd "$f"; done |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
    grep -v '^/usr/local/' | sort -u |
    while read -r lib; do
      dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null ||
        die "no Debian package holds $lib"
    done | cut -d: -f1 | sort -u | paste -sd, -
}
SOURCES=()
for b in "${BINARIES[@]}"; do SOURCES+=("$(src_of "$b")"); done
PACKAGES=$(packages_for_libs "${SOURCES[@]}" "$CRIU" "/usr/local/lib/${LIBCRIU[0]}")
# Bump the trailing number to force a new rootfs when the way it is made changes.
RECIPE="debootstrap suite=$SUITE variant=minbase include=$PACKAGES r1"

# ---------------------------------------------------------------------------------------
# rootfs
# ---------------------------------------------------------------------------------------
build_rootfs() {
  local tmp=$ROOTFS.tmp
  command -v debootstrap >/dev/null || die "debootstrap missing: run hack/setup.sh"
  log "debootstrap $SUITE (minbase + $PACKAGES) into $ROOTFS"
  rm -rf "$tmp"
  local t0=$SECONDS
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" \
      >"$CACHE/rootfs/$NAME.debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/rootfs/$NAME.debootstrap.log"; die "debootstrap failed"; }
  echo "    debootstrap took $((SECONDS - t0)) s"
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

if [ ! -f "$ROOTFS/.rekindle-rootfs" ] || [ "$(head -n1 "$ROOTFS/.rekindle-rootfs")" != "$RECIPE" ]; then
  build_rootfs
else
  log "rootfs $ROOTFS reused ($(sed -n 2p "$ROOTFS/.rekindle-rootfs"))"
fi

# ---------------------------------------------------------------------------------------
# binaries and CRIU into the rootfs (only what differs is copied)
# ---------------------------------------------------------------------------------------
put() {  # put SRC DEST MODE
  cmp -s "$1" "$ROOTFS$2" || install -D -m "$3" "$1" "$ROOTFS$2"
}
for b in "${BINARIES[@]}"; do put "$(src_of "$b")" "/usr/local/bin/$b" 0755; done
put "$CRIU" /usr/local/sbin/criu 0755
# libcriu as setup.sh lays it out: the file(s), then the same symlinks
for l in "$ROOTFS"/usr/local/lib/libcriu.so*; do   # ones the host no longer has
  [ -e "$l" ] || [ -L "$l" ] || continue
  [ -e "/usr/local/lib/${l##*/}" ] || [ -L "/usr/local/lib/${l##*/}" ] || rm -f "$l"
done
for l in "${LIBCRIU[@]}" libcriu.so; do
  if [ -L "/usr/local/lib/$l" ]; then
    ln -sfn "$(readlink "/usr/local/lib/$l")" "$ROOTFS/usr/local/lib/$l"
  elif [ -f "/usr/local/lib/$l" ]; then
    put "/usr/local/lib/$l" "/usr/local/lib/$l" 0755
  fi
done
chroot "$ROOTFS" /sbin/ldconfig
# its aux cache records inodes and ctimes: different on every run, and only a speed-up
rm -f "$ROOTFS/var/cache/ldconfig/aux-cache"
# every binary resolves all of its libraries inside the rootfs
for f in "${BINARIES[@]/#//usr/local/bin/}" /usr/local/sbin/criu; do
  out=$(chroot "$ROOTFS" /usr/bin/ldd "$f") || die "ldd $f in the rootfs failed"
  if grep -q 'not found' <<<"$out"; then
    echo "$out" >&2; die "$f: libraries not found in the rootfs"
  fi
done
got=$(chroot "$ROOTFS" /usr/local/sbin/criu --version | awk '/^Version:/ {print $2; exit}')
[ "$got" = "$CRIU_VERSION" ] || die "criu --version in the rootfs says '$got', host's $CRIU says '$CRIU_VERSION'"

# ---------------------------------------------------------------------------------------
# pack
# ---------------------------------------------------------------------------------------
inputs=$( {
  head -n1 "$ROOTFS/.rekindle-rootfs"
  sed -n 2p "$ROOTFS/.rekindle-rootfs"
  echo "$VERSION"
  (cd "$ROOTFS" && sha256sum usr/local/bin/* usr/local/sbin/criu etc/ld.so.cache)
  (cd "$ROOTFS" && find usr/local/lib -maxdepth 1 -name 'libcriu.so*' -printf '%p %l\n' | sort)
  cat "$SELF" "$REPO/hack/oci-image.py"
} | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = 0 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.inputs" 2>/dev/null)" = "$inputs" ]; then
  log "image $REPOSITORY:$VERSION up to date ($OUT)"
  echo "    manifest $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest"])' "$OUT.json")"
  exit 0
fi
log "packing $REPOSITORY:$VERSION and :latest into $OUT"
t0=$SECONDS
rm -f "$OUT.inputs"
python3 "$REPO/hack/oci-image.py" --rootfs "$ROOTFS" --out "$OUT" --name "$REPOSITORY:$VERSION" \
    --cmd /usr/local/bin/rekindle help \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.title=rekindle-node \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "io.rekindle.criu.version=$CRIU_VERSION" > "$OUT.json"
# A second name for the same manifest: index.json lists it twice, the second entry named
# :latest (`ctr images import` makes one image per named entry). Rewritten in place with
# the archive's own order, mtimes and modes, so the result stays deterministic.
python3 - "$OUT" "$REPOSITORY:latest" <<'EOF'
import io, json, os, sys, tarfile
path, latest = sys.argv[1], sys.argv[2]
tmp = path + ".tmp"
with tarfile.open(path) as src, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as dst:
    for ti in src.getmembers():
        if ti.name == "index.json":
            index = json.load(src.extractfile(ti))
            entry = json.loads(json.dumps(index["manifests"][0]))
            entry["annotations"]["io.containerd.image.name"] = latest
            entry["annotations"]["org.opencontainers.image.ref.name"] = "latest"
            index["manifests"].append(entry)
            data = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
            ti.size = len(data)
            dst.addfile(ti, io.BytesIO(data))
        else:
            dst.addfile(ti, src.extractfile(ti) if ti.isreg() else None)
os.replace(tmp, path)
EOF
echo "$inputs" > "$OUT.inputs"
echo "    packed in $((SECONDS - t0)) s; manifest $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest"])' "$OUT.json")"
log "rootfs $(du -sh "$ROOTFS" | cut -f1), image archive $(du -h "$OUT" | cut -f1) ($OUT)"
