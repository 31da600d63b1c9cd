//! Generates the libcriu bindings from the installed `criu.h` and links `libcriu`.
//!
//! Where the header comes from, first match wins:
//! 1. `CRIU_INCLUDE_DIR` (the folder holding `criu.h`);
//! 2. pkg-config's `criu` (CRIU installs `criu.pc`; `hack/setup.sh` writes one to
//!    /usr/local/lib/pkgconfig);
//! 3. /usr/local/include/criu, then /usr/include/criu.
//!
//! Where the library comes from: `CRIU_LIB_DIR`, else pkg-config's libdir, else
//! /usr/local/lib. Only CRIU >= 4.2 works on this project's kernels (see DESIGN.md);
//! `hack/setup.sh` builds it from source and installs libcriu + headers.

use std::env;
use std::path::{Path, PathBuf};

const SETUP_HINT: &str = "run `bash hack/setup.sh` as root (it builds CRIU 4.2.x from source and \
     installs /usr/local/lib/libcriu.so and /usr/local/include/criu/), or point CRIU_INCLUDE_DIR \
     and CRIU_LIB_DIR at a libcriu build (`make lib` in a CRIU source tree: lib/c/)";

struct Found {
    include_dir: PathBuf,
    /// Extra include paths that pkg-config reported (protobuf-c, if not in /usr/include).
    extra_includes: Vec<PathBuf>,
    lib_dir: PathBuf,
    how: &'static str,
}

fn main() {
    println!("cargo:rerun-if-env-changed=CRIU_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=CRIU_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");

    let found = match locate() {
        Ok(found) => found,
        Err(msg) => fail(&msg),
    };
    let header = found.include_dir.join("criu.h");
    println!("cargo:rerun-if-changed={}", header.display());

    let lib_dir = env::var_os("CRIU_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| found.lib_dir.clone());
    if !has_libcriu(&lib_dir) {
        fail(&format!(
            "found criu.h in {} ({}), but no libcriu.so in {}; {SETUP_HINT}",
            found.include_dir.display(),
            found.how,
            lib_dir.display()
        ));
    }

    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", found.include_dir.display()))
        // Everything libcriu exports, and the types those functions use.
        // (single underscores only: rpc.pb-c.h's message helpers, `criu_req__pack` and the
        // like, are CRIU's RPC internals, not libcriu's API, and would drag protobuf-c in)
        .allowlist_function("criu(_[a-z0-9]+)+")
        // criu.h's and version.h's macros; a bare `CRIU_.*` would also match the enum
        // constants of rpc.pb-c.h (CRIU_REQ_TYPE__DUMP, ...) and drag in protobuf-c.
        .allowlist_var("CRIU_(VERSION.*|GITID|LOG_.*)")
        // The notify callback's argument is a protobuf-c message that only
        // criu_notify_pid() reads; src/lib.rs declares it opaque, which keeps protobuf-c's
        // types out of the bindings.
        .blocklist_type("_?CriuNotify")
        .blocklist_type("_?Protobuf.*")
        .blocklist_type("protobuf_c_.*")
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for dir in &found.extra_includes {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }

    let bindings = match builder.generate() {
        Ok(b) => b,
        Err(e) => fail(&format!(
            "bindgen could not parse {}: {e}. criu.h includes \"rpc.pb-c.h\", which needs \
             protobuf-c's header (<protobuf-c/protobuf-c.h>, Debian package libprotobuf-c-dev), \
             and bindgen needs libclang (libclang-dev); {SETUP_HINT}",
            header.display()
        )),
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    let crt_static =
        env::var("CARGO_CFG_TARGET_FEATURE").is_ok_and(|f| f.split(',').any(|f| f == "crt-static"));
    if crt_static {
        // A static build (`-C target-feature=+crt-static`, how hack/static-shim.sh
        // builds the shim) loads no shared library: libcriu.a (hack/setup.sh installs it) and
        // protobuf-c's (libprotobuf-c-dev) go in.
        println!("cargo:rustc-link-lib=static=criu");
        // libprotobuf-c.a where pkg-config says its library is, else Debian's
        // multiarch directory.
        let protobuf_c = pkg_config::get_variable("libprotobuf-c", "libdir")
            .ok()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| {
                let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
                format!("/usr/lib/{arch}-linux-gnu")
            });
        println!("cargo:rustc-link-search=native={protobuf_c}");
        println!("cargo:rustc-link-lib=static=protobuf-c");
    } else {
        println!("cargo:rustc-link-lib=dylib=criu");
    }
    // Our own tests and examples find libcriu even where ldconfig has not been run for
    // /usr/local/lib. Binaries of other crates get this through `DEP_CRIU_LIBDIR` (below)
    // or through the ld.so cache that hack/setup.sh refreshes.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    // `links = "criu"`: dependents' build scripts see DEP_CRIU_INCLUDE and DEP_CRIU_LIBDIR.
    println!("cargo:include={}", found.include_dir.display());
    println!("cargo:libdir={}", lib_dir.display());
}

fn fail(msg: &str) -> ! {
    // cargo shows a failed build script's stderr under "failed to run custom build command".
    eprintln!("error: criu-sys: {msg}");
    std::process::exit(1);
}

fn has_libcriu(dir: &Path) -> bool {
    dir.join("libcriu.so").exists()
}

fn locate() -> Result<Found, String> {
    let default_lib = PathBuf::from("/usr/local/lib");

    if let Some(dir) = env::var_os("CRIU_INCLUDE_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("criu.h").exists() {
            return Err(format!(
                "CRIU_INCLUDE_DIR={} has no criu.h; {SETUP_HINT}",
                dir.display()
            ));
        }
        return Ok(Found {
            include_dir: dir,
            extra_includes: Vec::new(),
            lib_dir: default_lib,
            how: "CRIU_INCLUDE_DIR",
        });
    }

    let mut tried = Vec::new();
    match pkg_config::Config::new()
        .cargo_metadata(false)
        .env_metadata(false)
        .probe("criu")
    {
        Ok(lib) => {
            if let Some(dir) = lib.include_paths.iter().find(|d| d.join("criu.h").exists()) {
                let extra = lib
                    .include_paths
                    .iter()
                    .filter(|d| *d != dir)
                    .cloned()
                    .collect();
                return Ok(Found {
                    include_dir: dir.clone(),
                    extra_includes: extra,
                    lib_dir: lib.link_paths.first().cloned().unwrap_or(default_lib),
                    how: "pkg-config criu",
                });
            }
            tried.push(format!(
                "pkg-config criu (include paths {:?} hold no criu.h)",
                lib.include_paths
            ));
        }
        Err(e) => tried.push(format!(
            "pkg-config criu ({})",
            e.to_string().lines().next().unwrap_or("not found")
        )),
    }

    for (inc, lib) in [
        ("/usr/local/include/criu", "/usr/local/lib"),
        ("/usr/include/criu", "/usr/lib/x86_64-linux-gnu"),
    ] {
        let inc = PathBuf::from(inc);
        if inc.join("criu.h").exists() {
            let lib = PathBuf::from(lib);
            let lib_dir = if has_libcriu(&lib) {
                lib
            } else {
                default_lib.clone()
            };
            return Ok(Found {
                include_dir: inc,
                extra_includes: Vec::new(),
                lib_dir,
                how: "default location",
            });
        }
        tried.push(inc.display().to_string());
    }

    Err(format!(
        "libcriu's header criu.h was not found (tried CRIU_INCLUDE_DIR, {}); {SETUP_HINT}",
        tried.join(", ")
    ))
}
