//! Prints the version of the CRIU binary libcriu runs, and whether `criu check` passes.
//!
//! `cargo run -p criu-sys --example criu-version [-- /path/to/criu]`

use criu_sys::safe::{Criu, HEADER_VERSION};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), criu_sys::safe::Error> {
    let mut criu = Criu::new()?;
    if let Some(binary) = std::env::args_os().nth(1) {
        criu.set_service_binary(binary)?;
    }
    println!("criu.h:       {HEADER_VERSION}");
    println!("binary:       {}", criu.service_binary().display());
    println!("version:      {}", criu.version()?);
    match criu.check() {
        Ok(()) => println!("criu check:   ok"),
        Err(e) => println!("criu check:   {e}"),
    }
    Ok(())
}
