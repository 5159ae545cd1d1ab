//! Project tasks: `cargo xtask install` installs ctx the way a user gets it; `cargo xtask
//! rootfs` builds the Debian rootfs of the systemd VM test (issue 6).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod install;
mod rootfs;

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
    /// Build (or find in the cache) the Debian rootfs of the systemd VM test and print where it
    /// is.
    Rootfs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Install(o) => install::run(&o),
        Cmd::Rootfs => rootfs::print(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
