//! Project tasks: `cargo xtask install` installs ctx the way a user gets it; `cargo xtask
//! sysvm-dev` boots it under a real systemd in a nohz_full VM (issue 6).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod install;
mod rootfs;
mod sysvm;

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
    /// Development driver of the systemd VM test: boots kernels given as Debian packages with
    /// a Debian rootfs, systemd as PID 1 and ctx installed, and reads the guest's verdict.
    SysvmDev(sysvm::dev::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Install(o) => install::run(&o),
        Cmd::Rootfs => rootfs::print(),
        Cmd::SysvmDev(o) => sysvm::dev::run(&o),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
