//! ctxtop: which CPUs are being disturbed right now, by what, and which would need an IPI.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use ctx::cli::parse_duration;
use ctx::host::cpuset::CpuSet;
use ctx::host::system::{SysRoot, is_tty};
use ctx::outputs::report::{self, Report};
use ctx::probes::DEFAULT_PIN_DIR;
use ctx::session::{Attach, Session};
use ctx::tui;

#[derive(Debug, Parser)]
#[command(
    name = "ctxtop",
    version,
    about = "Per-CPU user/kernel/idle/NMI residency, interrupts and IPI verdicts"
)]
struct Args {
    /// Length of one interval (one refresh of the view).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// How often the per-CPU state is sampled for verdicts within an interval.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    sample_interval: Duration,
    /// Only show these CPUs (e.g. 1-3,8).
    #[arg(long)]
    cpus: Option<CpuSet>,
    /// Print one interval as a table and exit; the same as --count 1. Without a terminal on
    /// stdout, ctxtop prints tables like this (one per interval) and never draws a screen;
    /// with one, it opens the full-screen view unless --once or --json is given.
    #[arg(long)]
    once: bool,
    /// Print each interval as one line of JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit after N intervals (default: 1 when printing, until `q` in the full-screen view).
    #[arg(long)]
    count: Option<u64>,
    /// Where a running ctx-daemon pins its maps; ctxtop reads them instead of attaching again.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Attach private probes even if a daemon's pins exist.
    #[arg(long)]
    standalone: bool,
}

fn main() -> ExitCode {
    ctx::cli::main_with("ctxtop", "warn", || run(&Args::parse()))
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.sample_interval > args.interval {
        anyhow::bail!(
            "--sample-interval ({:?}) is longer than --interval ({:?})",
            args.sample_interval,
            args.interval
        );
    }
    let attach = if args.standalone {
        Attach::Standalone
    } else {
        Attach::Viewer {
            pin_dir: args.pin_dir.clone(),
        }
    };
    let mut session = Session::open(&attach, SysRoot::default()).context("opening the probes")?;
    // The full-screen view only on a terminal: a pipe or a file gets plain tables, without a
    // single escape code.
    if !args.once && !args.json && is_tty(libc::STDOUT_FILENO) {
        let opts = tui::app::Options {
            interval: args.interval,
            sample_interval: args.sample_interval,
            count: args.count,
            cpus: args.cpus.clone(),
        };
        return tui::app::run(&mut session, &opts);
    }
    let rounds = if args.once {
        1
    } else {
        args.count.unwrap_or(1)
    };
    let mut out = std::io::stdout().lock();
    for _ in 0..rounds {
        let first = session.sample().context("sampling")?;
        let start = Instant::now();
        let mut last = first.clone();
        while start.elapsed() < args.interval {
            let left = args.interval.saturating_sub(start.elapsed());
            std::thread::sleep(left.min(args.sample_interval));
            last = session.sample().context("sampling")?;
        }
        let mut rep = Report::new(
            session.facts.clone(),
            args.interval.as_secs_f64(),
            args.sample_interval.as_secs_f64(),
            &first,
            &last,
        );
        if let Some(keep) = &args.cpus {
            rep.interval.cpus.retain(|c| keep.contains(c.facts.cpu));
        }
        if args.json {
            serde_json::to_writer(&mut out, &rep)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", report::table(&rep, is_tty(libc::STDOUT_FILENO)))?;
        }
        out.flush()?;
    }
    Ok(())
}
