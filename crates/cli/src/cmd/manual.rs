//! `completions` and `man`: the shell completion scripts and the manual pages,
//! generated from the same definitions clap parses.

use std::path::Path;

use clap::CommandFactory as _;

use crate::cli::Cli;
use crate::error::Failure;

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "backchannel", &mut std::io::stdout());
    Ok(())
}

pub(crate) fn man(out_dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Failure::new(format!("cannot make {}: {e}", out_dir.display())))?;
    clap_mangen::generate_to(Cli::command(), out_dir).map_err(|e| {
        Failure::new(format!(
            "cannot write the manual pages into {}: {e}",
            out_dir.display()
        ))
    })?;
    eprintln!(
        "Manual pages written to {} (read one with `man {}/backchannel.1`).",
        out_dir.display(),
        out_dir.display()
    );
    Ok(())
}
