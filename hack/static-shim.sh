#!/usr/bin/env bash
# Builds containerd-shim-rekindle-v2 as a static-pie (glibc, libcriu and protobuf-c
# linked in; still position-independent, so still under ASLR), with the
# rekindle-criu-tar the shim looks for beside it, and prints the directory that holds
# them: target/static/<host triple>/release.
#
# Why: containerd waits for `shim start` on every container start. The dynamically
# linked shim loads five shared libraries first; the static-pie starts sooner (README,
# benchmark section: "A static shim"). The other binaries stay dynamically linked.
# A build of its own (`--target`, its own target dir): with crt-static for the host
# itself, cargo would apply it to proc-macros and build scripts too, which cannot be
# static.
#
# Used by hack/bench.sh, hack/demo.sh and hack/test.sh; needs hack/setup.sh's libcriu.a.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
triple=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$triple" ] || { echo "!!! rustc -vV names no host triple" >&2; exit 1; }
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --target "$triple" --target-dir "$REPO/target/static" \
  -p rekindle-shim --bin containerd-shim-rekindle-v2 --bin rekindle-criu-tar >&2
dir="$REPO/target/static/$triple/release"
[ -x "$dir/containerd-shim-rekindle-v2" ] || { echo "!!! no shim in $dir" >&2; exit 1; }
echo "$dir"
