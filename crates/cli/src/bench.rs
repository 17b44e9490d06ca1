//! Benchmarks.

use clap::Subcommand;

use crate::{Failure, Global};

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Load a relay.
    Relay,
}

pub(crate) async fn run(_g: &Global, _cmd: BenchCommand) -> Result<(), Failure> {
    Err(Failure::new("not written yet"))
}
