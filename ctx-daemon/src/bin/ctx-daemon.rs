//! ctx-daemon: keeps the programs attached and pinned, samples every CPU without IPIs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ctx::cli::{init_logging, parse_duration};
use ctx::loader::{self, DEFAULT_PIN_DIR};
use ctx::session::{Attach, Session};
use ctx::system::SysRoot;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "ctx-daemon",
    version,
    about = "Per-CPU context-tracking mirror and exporter"
)]
struct Args {
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    sample_interval: Duration,
    /// Remove the pinned programs and maps, then exit.
    #[arg(long)]
    detach: bool,
}

fn main() -> ExitCode {
    init_logging("info");
    if let Err(e) = ctx::system::exclude_from_thp() {
        tracing::warn!(
            "cannot opt out of transparent huge pages ({e}): khugepaged may IPI every CPU when \
             it collapses this process's memory"
        );
    }
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctx-daemon: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.detach {
        let r = loader::detach(&args.pin_dir)?;
        info!(links = r.links, maps = r.maps, dir = %args.pin_dir.display(), "detached");
        return Ok(());
    }
    let mut s = Session::open(
        &Attach::Daemon {
            pin_dir: args.pin_dir.clone(),
        },
        SysRoot::default(),
    )
    .context("attaching")?;
    info!(hooks = %s.probes.hooks_summary(), "attached");
    loop {
        s.sample()?;
        std::thread::sleep(args.sample_interval);
    }
}
