//! `rekindle-restored`: see `rekindle_restore_daemon` (the library) for what it does.

use std::process::ExitCode;

fn main() -> ExitCode {
    match rekindle_restore_daemon::main_with_args(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekindle-restored: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
