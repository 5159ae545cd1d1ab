//! Project tasks: `cargo xtask vm-test` boots Debian's nohz_full kernels under qemu and runs
//! ctx's scenarios in them (issue 3).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod vm;

#[derive(Parser)]
#[command(name = "xtask", about = "ctx project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot Debian's cloud kernels with nohz_full=1-3 under qemu (TCG) and run ctx's scenarios.
    VmTest(vm::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::VmTest(o) => vm::run(&o),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
