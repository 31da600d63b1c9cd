//! `rekindle`, the operator CLI: see `rekindle_agent::ctl`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match rekindle_agent::ctl::main_with_args(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekindle: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
