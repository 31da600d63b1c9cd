//! `rekindle-agent`, the per-node daemon: see `rekindle_agent::daemon`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match rekindle_agent::daemon::main_with_args(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekindle-agent: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
