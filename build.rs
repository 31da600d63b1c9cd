//! Builds the eBPF programs in `bpf/` and their Rust skeleton.
//!
//! `bpf/rekindle.bpf.c` is compiled by clang (`-target bpf -O2 -g`, through
//! libbpf-cargo's `SkeletonBuilder`, with libbpf's headers from the vendored libbpf)
//! against the checked-in `bpf/vmlinux.h`, and the skeleton is written to
//! `$OUT_DIR/rekindle.skel.rs`, which `src/bpf.rs` includes. `CLANG` picks another clang.

use std::env;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{exit, Command};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/rekindle.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var_os("CLANG").unwrap_or_else(|| OsString::from("clang"));
    match Command::new(&clang).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => fail(&format!(
            "`{} --version` failed ({}): {}",
            clang.to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => fail(&format!(
            "clang not found (`{}`): it compiles the eBPF programs in bpf/. \
             Install it with `bash hack/setup.sh` (Debian: apt-get install clang), \
             or point CLANG at a clang binary",
            clang.to_string_lossy()
        )),
        Err(e) => fail(&format!("cannot run `{}`: {e}", clang.to_string_lossy())),
    }

    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("rekindle.skel.rs");
    if let Err(e) = SkeletonBuilder::new()
        .source(SRC)
        .clang(&clang)
        // -mcpu=v3: atomic fetch/compare-and-swap (kernel >= 5.12). The libbpf headers
        // and -target bpf -O2 -g come from SkeletonBuilder.
        .clang_args(["-Ibpf", "-mcpu=v3", "-Wall", "-Werror"])
        .build_and_generate(&out)
    {
        fail(&format!("building {SRC}: {e:#}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1)
}
