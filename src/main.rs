//! milvus-fleet: one binary for the command line and the node daemon.

mod api;
mod cli;
mod cluster;
mod config;
mod daemon;
mod host;
mod job_kinds;
mod logging;
mod membership;
mod metrics;
mod pki;
mod render;
mod supervise;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes, joined by ": ".
            eprintln!("milvus-fleet: error: {error:#}");
            ExitCode::from(cli::exit_code(&error))
        }
    }
}
