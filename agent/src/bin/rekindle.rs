//! `rekindle`, the operator CLI: see `rekindle_agent::ctl` (and `rekindle_agent::install`
//! for `rekindle install` / `rekindle uninstall`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rekindle_agent::ctl::{self, Cli};
use rekindle_agent::install;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(result) = ctl::run_setup(&cli.command) {
        let what = format!("rekindle {} failed", cli.command.name());
        return match result.context(what) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rekindle: error: {e:#}");
                let code = e
                    .downcast_ref::<install::Error>()
                    .map_or(1, install::Error::exit_code);
                ExitCode::from(code)
            }
        };
    }
    if cli.command.uses_agent() {
        if let Err(e) =
            rekindle_agent::logging::init(rekindle_agent::config::LogFormat::Text, "warn")
        {
            eprintln!("rekindle: error: cannot set up logging: {e}");
            return ExitCode::from(1);
        }
        let result = ctl::run_agent(&cli).expect("an agent command");
        return match result.with_context(|| format!("rekindle {}", cli.command.name())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rekindle: error: {e:#}");
                let code = e
                    .downcast_ref::<ctl::AgentCommandError>()
                    .map_or(1, ctl::AgentCommandError::exit_code);
                ExitCode::from(code)
            }
        };
    }
    match ctl::init_and_run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekindle: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
