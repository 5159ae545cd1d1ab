//! Workloads for the ctx test VM, each pinned to one CPU. Talks to the guest init in lines:
//! it prints `ready` once set up, and `spin` takes commands on stdin.

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use ctx_vm_guest::sys::pin_self;
use ctx_vm_guest::work::{self, Duty, Membarrier, ZeroReader};

#[derive(Parser)]
#[command(name = "ctx-vm-work", about = "Pinned workloads for the ctx test VM")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Spin in user space on --cpu (a PAUSE loop), never entering the kernel. With --ipi-cpu, a
    /// second thread of the same process, pinned there, registers for
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` and, on `ipi N` from stdin, makes N such calls: each
    /// IPIs the CPUs that run this process's other threads, that is the spinner's CPU. It
    /// answers `done N MICROSECONDS`.
    Spin {
        #[arg(long)]
        cpu: usize,
        #[arg(long)]
        ipi_cpu: Option<usize>,
    },
    /// `read()` from /dev/zero into a pre-faulted buffer of --mib MiB, forever: long syscalls
    /// that spend their time clearing user memory in the kernel.
    ReadZero {
        #[arg(long)]
        cpu: usize,
        #[arg(long, default_value_t = 64)]
        mib: usize,
    },
    /// `getppid()` in a loop for --ms milliseconds, then print `done N` and exit.
    Syscalls {
        #[arg(long)]
        cpu: usize,
        #[arg(long)]
        ms: u64,
    },
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

fn ipi_server(cpu: usize, mb: &Membarrier) -> anyhow::Result<()> {
    pin_self(cpu)?;
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading a command")?;
        let Some(n) = line.strip_prefix("ipi ") else {
            bail!("unknown command {line:?}");
        };
        let n: u64 = n
            .trim()
            .parse()
            .with_context(|| format!("bad count in {line:?}"))?;
        let start = Instant::now();
        for _ in 0..n {
            mb.ipi().context("membarrier")?;
        }
        say(&format!("done {n} {}", start.elapsed().as_micros()))?;
    }
    Ok(())
}

fn spin(cpu: usize, ipi_cpu: Option<usize>) -> anyhow::Result<()> {
    if let Some(ipi_cpu) = ipi_cpu {
        let mb = Membarrier::register().context("registering for private expedited membarrier")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = pin_self(ipi_cpu);
            let ok = r.is_ok();
            let _ = tx.send(r);
            if ok && let Err(e) = ipi_server(ipi_cpu, &mb) {
                eprintln!("ctx-vm-work: ipi thread: {e:#}");
                std::process::exit(1);
            }
        });
        rx.recv().context("the IPI thread died")??;
    }
    pin_self(cpu)?;
    say("ready")?;
    work::spin(Duty::Always, &AtomicBool::new(false));
    Ok(())
}

fn read_zero(cpu: usize, mib: usize) -> anyhow::Result<()> {
    pin_self(cpu)?;
    let reader = ZeroReader::new(mib << 20).context("opening /dev/zero")?;
    say("ready")?;
    reader
        .run(Duty::Always, &AtomicBool::new(false))
        .context("reading /dev/zero")
}

fn syscalls(cpu: usize, ms: u64) -> anyhow::Result<()> {
    pin_self(cpu)?;
    say("ready")?;
    let n = work::getppid_for(Duration::from_millis(ms));
    say(&format!("done {n}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.cmd {
        Cmd::Spin { cpu, ipi_cpu } => spin(cpu, ipi_cpu),
        Cmd::ReadZero { cpu, mib } => read_zero(cpu, mib),
        Cmd::Syscalls { cpu, ms } => syscalls(cpu, ms),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctx-vm-work: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
