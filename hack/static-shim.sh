#!/usr/bin/env bash
# Builds containerd-shim-rekindle-v2 statically linked (glibc, libcriu and protobuf-c
# linked in) and not position-independent, with the rekindle-criu-tar the shim looks
# for beside it, and prints the directory that holds them:
# target/static/<host triple>/release.
#
# Why: containerd waits for `shim start` on every container start. The dynamically
# linked shim loads five shared libraries first; a static-pie still applies ~33,000
# relocations (and dirties the pages they land on) at every exec; a static
# executable at its link address does neither (README, benchmark section: "A static
# shim"). Its heap, stacks and mappings stay randomised, its code does not: as
# Debian builds runc and containerd-shim-runc-v2 (ELF executables, not PIE). The
# other binaries stay dynamically linked and PIE.
# A build of its own (`--target`, its own target dir): with crt-static for the host
# itself, cargo would apply it to proc-macros and build scripts too, which cannot be
# static.
#
# Used by hack/bench.sh, hack/demo.sh and hack/test.sh; needs hack/setup.sh's libcriu.a.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
triple=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$triple" ] || { echo "!!! rustc -vV names no host triple" >&2; exit 1; }
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --target "$triple" --target-dir "$REPO/target/static" \
  -p rekindle-shim --bin containerd-shim-rekindle-v2 --bin rekindle-criu-tar >&2
dir="$REPO/target/static/$triple/release"
[ -x "$dir/containerd-shim-rekindle-v2" ] || { echo "!!! no shim in $dir" >&2; exit 1; }
echo "$dir"
