//! Project tasks: `cargo xtask install` installs ctx the way a user gets it (issue 6).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod install;

#[derive(Parser)]
#[command(name = "xtask", about = "ctx project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build release binaries and install ctx: binaries, systemd unit, sysusers entry, default
    /// config and docs.
    Install(install::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Install(o) => install::run(&o),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
