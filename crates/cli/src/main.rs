//! `backchannel`: the command a person runs.
//!
//! Profiles, channels, invitations, messages, relays, the end-to-end demo and the
//! benchmarks. Exit codes: 0 success; 1 an error, explained in one line with what
//! to do; 2 a usage error; 3 a security alert (tampering detected).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cli;
mod cmd;
mod error;
mod lock;
mod output;
mod profile;
mod rpc;
mod session;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(cmd::run(cli.global, cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if failure.code != 3 || !failure.message.is_empty() {
                eprintln!("error: {}", failure.message);
            }
            if let Some(hint) = failure.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(failure.code)
        }
    }
}
