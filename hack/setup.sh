#!/usr/bin/env bash
# Rekindle development/test setup for a Debian bookworm host, run as root.
#
#   bash hack/setup.sh            # everything, ends with hack/build-image.sh
#   REKINDLE_SKIP_IMAGE=1 bash hack/setup.sh    # without the function image
#   REKINDLE_VERIFY_IMAGE=1 bash hack/setup.sh  # and run the image with containerd 2.x + 1.6
#
# Idempotent: a second run only checks what is there (a few seconds) and changes nothing.
# It installs:
#   - Debian packages (runc, iptables, debootstrap, CRIU build deps, clang, ...) with
#     --no-install-recommends (Debian's runc recommends criu 3.17, which is broken here);
#   - CRIU >= 4.2 built from Debian sid's orig tarball with hack/criu-patches/*.patch
#     applied: /usr/local/sbin/criu, /usr/local/lib/libcriu.so*, /usr/local/include/criu/
#     (the patch set's sha256 in /usr/local/share/rekindle/criu.patches.sha256: a changed
#     patch set is rebuilt);
#   - containerd binaries, NOT installed system-wide, only unpacked into the cache:
#     $REKINDLE_CACHE/containerd-2/usr/bin/{containerd,ctr,containerd-shim-runc-v2} (sid, 2.x)
#     $REKINDLE_CACHE/containerd-1.6/usr/bin/...                                     (bookworm)
# It starts no service and never touches /etc/apt/sources.list*.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${REKINDLE_CACHE:-/var/cache/rekindle}
MIRROR=${REKINDLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
CRIU_MIN=4.2
CRIU_RUNDIR=/run/criu
export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

log() { echo "==> $*"; }
die() { echo "!!! $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
[ -r /etc/debian_version ] || die "this script expects Debian (bookworm)"
mkdir -p "$CACHE"

# version_ge A B: A >= B (dpkg version ordering)
version_ge() { dpkg --compare-versions "$1" ge "$2"; }

# ---------------------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------------------
PKGS=(
  # runtime pieces
  runc iptables debootstrap python3 util-linux procps xz-utils ca-certificates
  # tests: tar and zstd (a foreign image is re-packed the way another node would ship it)
  tar zstd
  # tests/cri.rs: CNI plugins (ptp, host-local, loopback in /usr/lib/cni) for pods of
  # their own network namespace
  containernetworking-plugins
  # CRIU build dependencies (and patch, for hack/criu-patches)
  build-essential patch pkg-config libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  libprotobuf-dev libnl-3-dev libnet1-dev libcap-dev libbsd-dev python3-protobuf
  uuid-dev libdrm-dev
  # what the Rust crates need to build (containerd-client protos, libbpf-sys, BPF, bindgen)
  clang libclang-dev libelf-dev zlib1g-dev libseccomp-dev
)

missing_pkgs() {
  local p st
  for p in "$@"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || echo "$p"
  done
}

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update (bookworm lists)"
    apt-get update -qq
    APT_UPDATED=1
  fi
}

mapfile -t MISSING < <(missing_pkgs "${PKGS[@]}")
if [ "${#MISSING[@]}" -gt 0 ]; then
  log "installing ${#MISSING[@]} Debian packages: ${MISSING[*]}"
  apt_update_once
  apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
else
  log "Debian packages: all ${#PKGS[@]} present"
fi
if [ -e /usr/sbin/criu ] && dpkg-query -W -f='${db:Status-Status}' criu 2>/dev/null | grep -qx installed; then
  echo "    warning: Debian's criu package is installed (/usr/sbin/criu, 3.17 is broken here);" \
       "remove it with 'apt-get remove criu' — /usr/local/sbin/criu must be the one found" >&2
fi

# ---------------------------------------------------------------------------------------
# 2. A private apt configuration for Debian sid (never written to /etc/apt)
# ---------------------------------------------------------------------------------------
SID_DIR=$CACHE/apt-sid
SID_OPTS=(
  -o "Dir::Etc::SourceList=$SID_DIR/sources.list"
  -o "Dir::Etc::SourceParts=$SID_DIR/sources.list.d"
  -o "Dir::State::Lists=$SID_DIR/lists"
  -o "Dir::Cache=$SID_DIR/cache"
  -o "Dir::Etc::Preferences=$SID_DIR/preferences"
  -o "Dir::Etc::PreferencesParts=$SID_DIR/preferences.d"
  -o "Acquire::Languages=none"
  -o "APT::Get::List-Cleanup=true"
)
sid_apt() { apt-get "${SID_OPTS[@]}" "$@"; }
# a download dir apt's sandbox user (_apt) can write to
apt_dl_dir() { mkdir -p "$1"; if id _apt >/dev/null 2>&1; then chown _apt "$1"; fi; }

SID_READY=0
sid_prepare() {
  [ "$SID_READY" = 1 ] && return 0
  mkdir -p "$SID_DIR/sources.list.d" "$SID_DIR/preferences.d" "$SID_DIR/lists/partial" \
           "$SID_DIR/cache/archives/partial"
  : > "$SID_DIR/preferences"
  cat > "$SID_DIR/sources.list" <<EOF
# written by rekindle hack/setup.sh; used only through -o Dir::Etc::SourceList=...
deb [signed-by=$KEYRING] $MIRROR sid main
deb-src [signed-by=$KEYRING] $MIRROR sid main
EOF
  log "apt-get update (private sid lists in $SID_DIR)"
  sid_apt update -qq
  SID_READY=1
}

# ---------------------------------------------------------------------------------------
# 3. CRIU >= 4.2 from Debian sid's orig tarball
# ---------------------------------------------------------------------------------------
# Rekindle's CRIU patches, applied in name order; "none" when there are none.
CRIU_PATCHES=()
for p in "$REPO"/hack/criu-patches/*.patch; do
  [ -f "$p" ] && CRIU_PATCHES+=("$p")
done
# Without GnuTLS and libnftables (hack/criu-patches/0004): Rekindle uses neither, and
# the static link below needs no archives of them (while criu was linked dynamically,
# an exec of it loaded 7 libraries instead of 21 without them).
CRIU_MAKE_FLAGS=(RUNDIR="$CRIU_RUNDIR" NO_GNUTLS=1 NO_NFTABLES=1)
# The criu binary linked static-pie (libcriu stays a shared library): every restore
# execs criu twice (swrk, the lazy-pages daemon), and without the dynamic loader's
# work an exec of it costs ~0.5 ms of CPU instead of ~0.85 (perf stat of
# `criu --version` here). Still position-independent, so still under ASLR. The static
# archives come with the -dev packages above. CRIU's plugins (dlopen'ed from its
# plugin directory) are neither built nor installed here. GMONLDOPT because it is the
# one variable CRIU's Makefile puts on the final link of criu alone (LDFLAGS also
# reaches its `ld -r` steps, which reject the option).
CRIU_LINK_FLAGS=(GMONLDOPT=-static-pie)
if [ "${#CRIU_PATCHES[@]}" -gt 0 ]; then
  # The build flags count as part of the patch set: other flags, another build.
  CRIU_PATCHES_SUM=$({ cat "${CRIU_PATCHES[@]}"; echo "${CRIU_MAKE_FLAGS[*]} ${CRIU_LINK_FLAGS[*]}"; } | sha256sum | awk '{print $1}')
else
  CRIU_PATCHES_SUM=none
fi
CRIU_PATCHES_STAMP=/usr/local/share/rekindle/criu.patches.sha256

criu_installed_version() {
  # "Version: 4.2.1" -> 4.2.1
  /usr/local/sbin/criu --version 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}

criu_ok() {
  local v
  v=$(criu_installed_version) || return 1
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" || return 1
  # Built with RUNDIR=$CRIU_RUNDIR, so it can cache its kernel-feature detection there.
  grep -qa "$CRIU_RUNDIR/criu.kdat" /usr/local/sbin/criu || return 1
  [ -e /usr/local/include/criu/criu.h ] || return 1
  ls /usr/local/lib/libcriu.so.* >/dev/null 2>&1 || return 1
  # built with the current patch set (an install from before patches counts as none)
  [ "$(cat "$CRIU_PATCHES_STAMP" 2>/dev/null || echo none)" = "$CRIU_PATCHES_SUM" ] || return 1
  return 0
}

build_criu() {
  local src=$CACHE/src dl tarball ver dir
  dl=$src/download
  mkdir -p "$dl"
  sid_prepare
  tarball=$(ls "$dl"/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$tarball" ]; then
    log "downloading CRIU source from sid (apt-get source --download-only criu)"
    # Only the orig tarball matters; the .dsc/.debian.tar may fail (404) — tolerated.
    apt_dl_dir "$dl"
    if ! (cd "$dl" && sid_apt source --download-only -qq criu) >"$src/apt-source.log" 2>&1; then
      echo "    (apt-get source reported errors, tolerated if the orig tarball came:" \
           "$(grep -c '^E:' "$src/apt-source.log") error lines in $src/apt-source.log)"
    fi
    tarball=$(ls "$dl"/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -n1 || true)
  fi
  [ -n "$tarball" ] || die "no criu orig tarball downloaded from sid"
  ver=$(basename "$tarball" | sed -E 's/^criu_(.*)\.orig\.tar\..*$/\1/')
  version_ge "$ver" "$CRIU_MIN" || die "sid's criu is $ver, need >= $CRIU_MIN"
  case "$ver" in 4.2|4.2.*) ;; *) echo "    note: sid's criu is $ver (expected 4.2.x); using it" ;; esac
  echo "$ver" > "$CACHE/criu.version"

  dir=$src/criu-$ver
  # The tree holds the patch set it was patched with (an older tree: none); another
  # patch set starts from a fresh tree.
  if [ ! -f "$dir/Makefile" ] ||
     [ "$(cat "$dir/.rekindle-patches" 2>/dev/null || echo none)" != "$CRIU_PATCHES_SUM" ]; then
    rm -rf "$dir" "$dir.tmp"; mkdir -p "$dir.tmp"
    tar -xf "$tarball" -C "$dir.tmp" --strip-components=1
    local p
    for p in "${CRIU_PATCHES[@]}"; do
      log "patching CRIU: $(basename "$p")"
      patch -d "$dir.tmp" -p1 --quiet --forward < "$p" || die "$p does not apply to CRIU $ver"
    done
    echo "$CRIU_PATCHES_SUM" > "$dir.tmp/.rekindle-patches"
    mv "$dir.tmp" "$dir"
  fi
  log "building CRIU $ver (make -j2 criu lib ${CRIU_MAKE_FLAGS[*]}; criu with ${CRIU_LINK_FLAGS[*]}) in $dir"
  local t0=$SECONDS
  # RUNDIR is compiled into kerndat.o only: a tree built with another one starts clean.
  make -C "$dir" clean >/dev/null 2>&1 || true
  make -C "$dir" -j2 criu "${CRIU_MAKE_FLAGS[@]}" "${CRIU_LINK_FLAGS[@]}" >"$src/criu-build.log" 2>&1 || { tail -n 40 "$src/criu-build.log"; die "CRIU build failed"; }
  make -C "$dir" -j2 lib "${CRIU_MAKE_FLAGS[@]}" >>"$src/criu-build.log" 2>&1 || { tail -n 40 "$src/criu-build.log"; die "libcriu build failed"; }
  echo "    built in $((SECONDS - t0)) s (log: $src/criu-build.log)"

  log "installing CRIU $ver to /usr/local"
  install -D -m 0755 "$dir/criu/criu" /usr/local/sbin/criu
  # libcriu, laid out as CRIU's own `make install-lib` does:
  # libcriu.so.MAJOR.MINOR, with libcriu.so.MAJOR (the soname) and libcriu.so symlinks
  local somaj somin
  somaj=$(sed -n 's/^CRIU_SO_VERSION_MAJOR[[:space:]]*:=[[:space:]]*//p' "$dir/Makefile.versions")
  somin=$(sed -n 's/^CRIU_SO_VERSION_MINOR[[:space:]]*:=[[:space:]]*//p' "$dir/Makefile.versions")
  rm -f /usr/local/lib/libcriu.so /usr/local/lib/libcriu.so.*
  install -m 0755 "$dir/lib/c/libcriu.so" "/usr/local/lib/libcriu.so.$somaj.$somin"
  ln -sfn "libcriu.so.$somaj.$somin" "/usr/local/lib/libcriu.so.$somaj"
  ln -sfn "libcriu.so.$somaj.$somin" /usr/local/lib/libcriu.so
  install -m 0644 "$dir/lib/c/libcriu.a" /usr/local/lib/libcriu.a
  ldconfig
  # headers (lib/Makefile's UAPI_HEADERS): criu.h includes "version.h" and "rpc.pb-c.h"
  install -d /usr/local/include/criu
  install -m 0644 "$dir/lib/c/criu.h" "$dir/images/rpc.proto" "$dir/images/rpc.pb-c.h" \
    "$dir/criu/include/version.h" /usr/local/include/criu/
  # pkg-config file, like CRIU's own `make install-lib` writes
  local libver
  libver=$(sed -n 's/^#define CRIU_VERSION "\(.*\)"/\1/p' "$dir/criu/include/version.h" | head -n1)
  install -d /usr/local/lib/pkgconfig
  cat > /usr/local/lib/pkgconfig/criu.pc <<EOF
prefix=/usr/local
libdir=\${prefix}/lib
includedir=\${prefix}/include/criu

Name: CRIU
Description: RPC library for userspace checkpoint and restore
Version: ${libver:-$ver}
Libs: -L\${libdir} -lcriu
Cflags: -I\${includedir}
Requires.private: libprotobuf-c
EOF
  install -d /usr/local/share/rekindle
  echo "$CRIU_PATCHES_SUM" > "$CRIU_PATCHES_STAMP"
}

if criu_ok; then
  log "CRIU $(criu_installed_version) already installed (/usr/local/sbin/criu, libcriu, headers)"
else
  build_criu
  criu_ok || die "CRIU install check failed"
fi
case ":$PATH:" in
  *:/usr/local/sbin:*) ;;
  *) echo "    note: /usr/local/sbin is not on PATH; use /usr/local/sbin/criu explicitly" ;;
esac
# CRIU caches its kernel-feature detection (~20-25 ms of every restore) in
# $CRIU_RUNDIR/criu.kdat, but only when that directory is a tmpfs (so the cache
# cannot outlive a reboot). /run is not a tmpfs on these machines: give CRIU one.
if [ "$(stat -f -c %T "$CRIU_RUNDIR" 2>/dev/null)" != tmpfs ]; then
  mkdir -p "$CRIU_RUNDIR"
  mount -t tmpfs -o mode=0700,size=4m rekindle-criu "$CRIU_RUNDIR"
  log "mounted a tmpfs at $CRIU_RUNDIR for CRIU's detection cache"
fi
# Each restore moves its `criu swrk` into the container's cgroups; without cgroup
# favordynmods the first move waits for an RCU grace period (6-13 ms here). Mounting
# any hierarchy with the option switches the kernel to cheap migrations, and from 6.18
# the switch outlives the mount: a named v1 hierarchy is mounted with it and unmounted
# at once, in a private mount namespace (systemd/rekindle-favordynmods.service on
# nodes; a hierarchy left mounted would show in every /proc/<pid>/cgroup and runc would
# try to mount it into containers). Idempotent; before 6.18 it is not done (noted).
kernel_ge() {  # major minor
  local v; v=$(uname -r); v=${v%%-*}
  local ma=${v%%.*} mi; mi=${v#*.}; mi=${mi%%.*}
  [ "$ma" -gt "$1" ] || { [ "$ma" -eq "$1" ] && [ "$mi" -ge "$2" ]; }
}
if kernel_ge 6 18; then
  if unshare --mount --propagation private -- sh -c \
       'd=$(mktemp -d) && mount -t cgroup -o none,name=rekindle,favordynmods rekindle "$d" && umount "$d" && rmdir "$d"' \
       2>/dev/null; then
    log "cgroup favordynmods on (cheap cgroup migrations until reboot)"
  else
    echo "    note: could not turn on cgroup favordynmods; each restore's move into its" \
         "cgroups may wait for an RCU grace period"
  fi
else
  echo "    note: kernel $(uname -r) < 6.18: cgroup favordynmods not turned on (it would" \
       "have to stay mounted); each restore's move into its cgroups may wait for an RCU grace period"
fi
log "criu check (CRIU $(criu_installed_version))"
if out=$(/usr/local/sbin/criu check 2>&1); then
  printf '%s\n' "$out" | sed 's/^/    /'
else
  printf '%s\n' "$out" | sed 's/^/    /'
  die "criu check failed"
fi

# ---------------------------------------------------------------------------------------
# 4. containerd binaries, unpacked (not installed) into the cache
# ---------------------------------------------------------------------------------------
containerd_ok() {  # dir -> prints version line
  local bin=$1/usr/bin
  [ -x "$bin/containerd" ] && [ -x "$bin/ctr" ] && [ -x "$bin/containerd-shim-runc-v2" ] || return 1
  "$bin/containerd" --version 2>/dev/null
}

# fetch_containerd NAME DEST sid|bookworm
fetch_containerd() {
  local dest=$1 suite=$2 dl=$CACHE/debs/$2 deb
  rm -rf "$dl"; apt_dl_dir "$dl"
  if [ "$suite" = sid ]; then
    sid_prepare
    (cd "$dl" && sid_apt download -qq containerd)
  else
    # the system lists may be stale (a 404 for a superseded .deb): update once and retry
    if ! (cd "$dl" && apt-get download -qq containerd) 2>/dev/null; then
      apt_update_once
      (cd "$dl" && apt-get download -qq containerd)
    fi
  fi
  deb=$(ls "$dl"/containerd_*.deb | head -n1)
  log "unpacking $(basename "$deb") into $dest"
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  dpkg -x "$deb" "$dest.tmp"
  dpkg-deb -f "$deb" Version > "$dest.tmp/.deb-version"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
}

for spec in "containerd-2:sid:2." "containerd-1.6:bookworm:1.6"; do
  IFS=: read -r name suite want <<<"$spec"
  dest=$CACHE/$name
  if ! v=$(containerd_ok "$dest"); then
    log "fetching containerd from Debian $suite"
    fetch_containerd "$dest" "$suite"
    v=$(containerd_ok "$dest") || die "$dest/usr/bin/containerd does not run"
  fi
  dv=$(cat "$dest/.deb-version" 2>/dev/null || echo '?')
  case "$v" in
    *" v$want"*|*" $want"*) ;;
    *) echo "    warning: $name holds '$v' (expected $want*)" >&2 ;;
  esac
  log "$name: $v (deb $dv) at $dest/usr/bin"
done

# ---------------------------------------------------------------------------------------
# 5. The reference function image
# ---------------------------------------------------------------------------------------
if [ "${REKINDLE_SKIP_IMAGE:-0}" = 1 ]; then
  log "REKINDLE_SKIP_IMAGE=1: not building the function image"
else
  # REKINDLE_VERIFY_IMAGE=1 also imports and runs it with both containerd versions
  REKINDLE_CACHE=$CACHE bash "$REPO/hack/build-image.sh" \
    $([ "${REKINDLE_VERIFY_IMAGE:-0}" = 1 ] && echo --verify)
fi
log "setup done"
