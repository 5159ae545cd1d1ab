//! ctx-daemon: keeps ctx's programs attached (pinned, so restarts reuse them instead of
//! attaching again), samples every CPU without IPIs, and serves Prometheus metrics.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ctx::cli::parse_sample_interval;
use ctx::daemon::config::{self, DEFAULT_CONFIG, FlagConfig, Settings};
use ctx::daemon::ledger::LedgerMap;
use ctx::daemon::lock;
use ctx::daemon::pinwatch::{self, PinHealth, PinWatch};
use ctx::daemon::service::{self, SamplingLoop, Stop};
use ctx::host::btf::{CtLayout, KernelBtf};
use ctx::host::cpuset::CpuSet;
use ctx::host::kstate::KernelCtReader;
use ctx::host::system::{self, SysRoot};
use ctx::model::sweeps::SweepTotals;
use ctx::outputs::metrics::{ExportStatic, ExportView};
use ctx::outputs::serve::{self, Shared};
use ctx::probes::hooks::HookStatus;
use ctx::probes::{LoadError, LogSource, pins};
use ctx::session::{Attach, Session};
use ctx_common::programs::{DETECTED_ONLY, HOOKS, MAP_META};
use sd_notify::NotifyState;
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "ctx-daemon",
    version,
    about = "Per-CPU context-tracking mirror: user/kernel/idle/NMI residency, IPI verdicts and IPIs received, as Prometheus metrics"
)]
struct Args {
    /// Address to serve /metrics and /healthz on [default: 0.0.0.0:10977].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Export only these CPUs (e.g. the `nohz_full` set, 1-15) [default: all].
    #[arg(long, value_name = "LIST")]
    cpus: Option<CpuSet>,
    /// How often every CPU's state is sampled for verdicts, 1ms to 60s [default: 10ms].
    #[arg(long, value_parser = parse_sample_interval)]
    sample_interval: Option<Duration>,
    /// bpffs directory for the pinned maps and links [default: /sys/fs/bpf/ctx].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// TOML config file; flags win over it.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Let ctx's own threads run on `nohz_full` CPUs too (by default it keeps to the others).
    #[arg(long)]
    no_housekeeping_affinity: bool,
    /// Remove the pinned programs and maps (detaching ctx from the kernel), then exit.
    #[arg(long)]
    detach: bool,
    /// Most HTTP connections open at once; more are answered 503 and closed (keep it below
    /// the open-file limit, 4096 in the unit).
    #[arg(long = "web.max-connections", default_value_t = serve::Limits::default().max_connections,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..), usize::from))]
    max_connections: usize,
    /// Most requests served at once; more are answered 503 (the node exporter's flag).
    #[arg(long = "web.max-requests", default_value_t = serve::Limits::default().max_requests,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..), usize::from))]
    max_requests: usize,
    /// Check what would attach, print it, and exit without attaching or serving.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    ctx::cli::main_with("ctx-daemon", "info", || run(&Args::parse()))
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let explicit = args.config.as_os_str() != DEFAULT_CONFIG;
    let file = config::read_file(&args.config, explicit)?;
    let flags = FlagConfig {
        listen: args.listen,
        cpus: args.cpus.clone(),
        sample_interval: args.sample_interval,
        pin_dir: args.pin_dir.clone(),
        housekeeping_affinity: args.no_housekeeping_affinity.then_some(false),
    };
    Ok(config::resolve(&flags, file.as_ref(), &args.config)?)
}

fn run(args: &Args) -> anyhow::Result<()> {
    let set = settings(args)?;
    if args.detach {
        return detach(&set);
    }
    let sys = SysRoot::default();
    config::check_cpus(set.cpus.as_ref(), &sys.possible()?)?;
    if args.check {
        return check(&set, &sys);
    }
    // Fail on missing privileges before binding or attaching anything.
    let missing = system::missing_caps(sys.effective_caps()?);
    if !missing.is_empty() {
        return Err(LoadError::Capabilities {
            missing: missing.join(", "),
        }
        .into());
    }
    if set.housekeeping_affinity
        && let Some(cpus) = service::pin_to_housekeeping(&sys)
    {
        info!(%cpus, "running on housekeeping CPUs only");
    }
    let listener = bind(&set, args)?;

    // One daemon per pin dir, taken before attaching so a second start never touches pins
    // the first one uses.
    pins::prepare_pin_dir(&set.pin_dir)?;
    let _lock = lock::lock(&set.pin_dir)?;
    let mut session = attach(&set, &sys)?;
    // Opened before dropping capabilities: finding a program's maps by id needs CAP_SYS_ADMIN.
    let logger = match std::mem::replace(&mut session.probes.logs, LogSource::None) {
        LogSource::Reader(l) => Some(*l),
        LogSource::ProgramId(id) => open_log_reader(id),
        LogSource::None => None,
    };
    let ledger = session.probes.ledger.take().map(LedgerMap::new);
    let pin_health = Arc::new(PinHealth::default());
    let watch = PinWatch::hold(
        &set.pin_dir,
        pinwatch::attached_tracepoints(session.probes.meta.hooks_attached),
        Arc::clone(&pin_health),
    );
    match service::drop_capabilities() {
        Ok(kept) => info!(kept = %kept, "dropped capabilities not needed for sampling"),
        Err(e) => warn!("could not drop capabilities: {e}"),
    }

    let links = pins::expected_pins(
        &set.pin_dir,
        HOOKS
            .iter()
            .enumerate()
            .filter(|(i, _)| session.probes.meta.hooks_attached & (1 << i) != 0)
            .map(|(_, h)| h.tracepoint),
    );
    let stat = ExportStatic {
        facts: session.facts.clone(),
        cpus: set.cpus.clone(),
        pins: Some(Arc::clone(&pin_health)),
    };

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 3);
    let mut sampler = SamplingLoop {
        session,
        ledger,
        shared: Arc::new(Shared::new(
            stat,
            ExportView::default(),
            service::max_age(set.sample_interval),
            links,
        )),
        interval: set.sample_interval,
        totals: SweepTotals::default(),
        watchdog,
        pins: Some(Arc::clone(&pin_health)),
    };
    sampler.restore();
    if sampler.session.probes.repaired.is_some() {
        pin_health.note_repair();
    }
    system::release_startup_memory();
    let first = sampler
        .step()
        .context("first sample of the per-CPU map failed")?;
    // Carries the counters read back from the ledger: nothing is served before they are.
    let view = sampler.initial_view(&first);
    sampler.shared.publish(view, first.taken_ns);
    let status = service::status_line(&first);
    let limits = serve::Limits {
        max_connections: args.max_connections,
        max_requests: args.max_requests,
        ..serve::Limits::default()
    }
    .fit_to_fd_limit();
    serve_until_stopped(
        sampler, watch, listener, set.listen, logger, &status, limits,
    )?;
    info!(
        "stopped; programs stay attached (pinned) for the next start; `ctx-daemon --detach` removes them"
    );
    Ok(())
}

/// Binds the HTTP port, before attaching: attaching text-patches the kernel and IPIs every
/// CPU, which is not worth doing for a daemon that then cannot serve.
fn bind(set: &Settings, args: &Args) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(set.listen).with_context(|| {
        format!(
            "cannot listen on {}: choose another address with --listen or `listen` in {}",
            set.listen,
            args.config.display()
        )
    })?;
    listener.set_nonblocking(true)?;
    if set.listen.ip().is_unspecified() {
        info!(
            listen = %set.listen,
            "listening on every address; narrow it with --listen 127.0.0.1:{} (or `listen` in the \
             config) when only local scrapers need it",
            set.listen.port()
        );
    }

    Ok(listener)
}

/// `--detach`. A running daemon would pin again what is removed under it: it must be stopped
/// first, which its lock on the pin dir tells.
fn detach(set: &Settings) -> anyhow::Result<()> {
    let _lock = if set.pin_dir.is_dir() {
        Some(lock::lock(&set.pin_dir)?)
    } else {
        None
    };
    let r = pins::detach(&set.pin_dir)?;
    info!(links = r.links, maps = r.maps, dir = %set.pin_dir.display(), "detached");
    Ok(())
}

/// Attaches (or reuses the pins) and says what became of each hook.
fn attach(set: &Settings, sys: &SysRoot) -> anyhow::Result<Session> {
    let session = Session::open(
        &Attach::Daemon {
            pin_dir: set.pin_dir.clone(),
        },
        sys.clone(),
    )
    .context("attaching ctx's programs")?;
    let reused = session
        .probes
        .hooks
        .hooks
        .iter()
        .filter(|(_, s)| matches!(s, HookStatus::Reused))
        .count();
    info!(
        reused,
        hooks = %session.probes.hooks.summary(),
        pin_dir = %set.pin_dir.display(),
        "programs ready"
    );
    for (h, s) in &session.probes.hooks.hooks {
        let hook = format!("{}:{}", h.group, h.tracepoint);
        match s {
            // Expected where the kernel lacks the feature (no CONTEXT_TRACKING_USER, say).
            HookStatus::Absent => info!(hook, "hook absent from this kernel"),
            s if !s.active() => warn!(hook, status = %s, "hook not in use"),
            _ => {}
        }
    }
    Ok(session)
}

/// Runs the sampling thread and the HTTP server until SIGTERM or SIGINT.
fn serve_until_stopped(
    sampler: SamplingLoop,
    mut watch: PinWatch,
    listener: TcpListener,
    listen: SocketAddr,
    logger: Option<Logger>,
    status: &str,
    limits: serve::Limits,
) -> anyhow::Result<()> {
    let shared = Arc::clone(&sampler.shared);
    let stop = Arc::new(Stop::default());
    let stop_s = Arc::clone(&stop);
    let sampler_thread = std::thread::Builder::new()
        .name("ctx-sampler".into())
        .spawn(move || sampler.run(&stop_s))
        .context("starting the sampler thread")?;
    let stop_w = Arc::clone(&stop);
    let watch_thread = std::thread::Builder::new()
        .name("ctx-pins".into())
        .spawn(move || {
            while !stop_w.wait(pinwatch::CHECK_EVERY) {
                watch.check();
            }
        })
        .context("starting the pin check thread")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = rt.block_on(async move {
        if let Some(l) = logger {
            spawn_log_reader(l);
        }
        let listener = tokio::net::TcpListener::from_std(listener)?;
        info!(%listen, "serving /metrics and /healthz");
        service::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
        serve::serve(listener, serve::router(shared), limits, shutdown_signal()).await;
        Ok::<(), std::io::Error>(())
    });
    // Dropping the runtime ends the connections still open.
    drop(rt);
    service::notify(&[NotifyState::Stopping]);
    stop.ask();
    if sampler_thread.join().is_err() {
        warn!("sampler thread panicked");
    }
    if watch_thread.join().is_err() {
        warn!("pin check thread panicked");
    }
    served.context("serving HTTP")
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

fn open_log_reader(prog_id: u32) -> Option<Logger> {
    aya_log::EbpfLogger::init_from_id(prog_id)
        .map_err(|e| {
            info!(
                "hotplug log records of the reused programs are not forwarded ({e}): reading \
                 them by program id needs CAP_SYS_ADMIN"
            );
        })
        .ok()
}

/// Forwards the eBPF side's cold-path log records (aya-log) to our log.
fn spawn_log_reader(logger: Logger) {
    // SAFETY: the logger owns its ring buffer fd; flushing does not close or replace it.
    let fd = match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("eBPF log records unavailable: {e}");
            return;
        }
    };
    let mut fd = fd;
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut g) => {
                    g.get_inner_mut().flush();
                    g.clear_ready();
                }
                Err(e) => {
                    warn!("eBPF log reader stopped: {e}");
                    return;
                }
            }
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    if let (Ok(mut t), Ok(mut i)) = (term, int) {
        tokio::select! {
            _ = t.recv() => info!("SIGTERM: stopping"),
            _ = i.recv() => info!("SIGINT: stopping"),
        }
    } else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
    }
}

/// The kernel's own per-CPU context-tracking state, when it can be read (root, /proc/kcore,
/// `KALLSYMS_ALL`): the cross-check for ctx's mirror.
fn print_kernel_states(sys: &SysRoot, layout: CtLayout) {
    let Ok(possible) = sys.possible() else { return };
    let n = possible.max().map_or(1, |m| m as usize + 1);
    match KernelCtReader::open(&sys.proc, layout, n) {
        Ok(r) => {
            for cpu in sys.online().unwrap_or_default().iter() {
                match r.read(cpu) {
                    Ok(s) => println!(
                        "kernel state cpu {cpu}: {} (raw {:#x}, RCU watching counter {})",
                        s.state, s.raw, s.watching
                    ),
                    Err(e) => println!("kernel state cpu {cpu}: {e}"),
                }
            }
        }
        Err(e) => println!("kernel state: not readable: {e}"),
    }
}

/// `--check`: preflight without attaching.
fn check(set: &Settings, sys: &SysRoot) -> anyhow::Result<()> {
    println!("ctx-daemon {} check", ctx::VERSION);
    println!("kernel: {}", sys.kernel_release());
    println!("listen: {}", set.listen);
    println!("pin dir: {}", set.pin_dir.display());
    println!("sample interval: {:?}", set.sample_interval);
    // What a start would do first: a pin dir it cannot create or write fails here too.
    pins::prepare_pin_dir(&set.pin_dir)?;
    println!("pin dir writable: yes");
    let nohz = sys.nohz_full();
    println!(
        "nohz_full: {}",
        if nohz.is_empty() {
            "-".into()
        } else {
            nohz.to_string()
        }
    );
    let caps = sys.effective_caps()?;
    let missing = system::missing_caps(caps);
    println!(
        "capabilities: {}",
        if missing.is_empty() {
            "ok".into()
        } else {
            format!("missing {}", missing.join(", "))
        }
    );
    let btf = KernelBtf::load(&sys.btf_path());
    match &btf {
        Ok(b) => {
            println!("BTF: {}", sys.btf_path().display());
            if let Some(l) = b.ct_layout() {
                println!("kernel context_tracking.state: {}", l.describe());
                print_kernel_states(sys, l);
            }
            for h in &HOOKS {
                println!(
                    "hook {}:{}: {}",
                    h.group,
                    h.tracepoint,
                    if b.has_tracepoint(h.tracepoint) {
                        "present"
                    } else {
                        "absent"
                    }
                );
            }
            for (g, tp) in DETECTED_ONLY {
                println!(
                    "hook {g}:{tp} (reported only): {}",
                    if b.has_tracepoint(tp) {
                        "present"
                    } else {
                        "absent"
                    }
                );
            }
        }
        Err(e) => println!("BTF: {e}"),
    }
    let pinned = set.pin_dir.join("maps").join(MAP_META).exists();
    println!(
        "pinned programs: {}",
        if pinned {
            "present (a start reuses them)"
        } else {
            "none (a start attaches)"
        }
    );
    if !missing.is_empty() {
        anyhow::bail!("missing capabilities: {}", missing.join(", "));
    }
    Ok(())
}
