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
use ctx::outputs::webconfig::WebConfig;
use ctx::probes::attach::{self, LoadOptions};
use ctx::probes::hooks::HookStatus;
use ctx::probes::{LoadError, LogSource, pins};
use ctx::session::{Attach, Session};
use ctx_common::programs::{DETECTED_ONLY, MAP_META};
use sd_notify::NotifyState;
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line switches, each its own flag"
)]
#[command(
    name = "ctx-daemon",
    version,
    about = "Per-CPU context-tracking mirror: user/kernel/idle/NMI residency, IPI verdicts and IPIs received, as Prometheus metrics"
)]
struct Args {
    /// Address to serve /metrics, /healthz and / on [default: 0.0.0.0:10977].
    #[arg(
        long = "web.listen-address",
        visible_alias = "listen",
        value_name = "ADDR:PORT"
    )]
    listen: Option<SocketAddr>,
    /// Path of the metrics [default: /metrics].
    #[arg(long = "web.telemetry-path", value_name = "PATH",
          value_parser = config::parse_telemetry_path)]
    telemetry_path: Option<String>,
    /// The Prometheus exporter toolkit's web configuration (YAML): TLS, basic auth, headers.
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config_file: Option<PathBuf>,
    /// Serve on the socket systemd passes (socket activation, ctx.socket) instead of binding
    /// --web.listen-address.
    #[arg(long = "web.systemd-socket")]
    systemd_socket: bool,
    /// Export only these CPUs (e.g. the `nohz_full` set, 1-15) [default: all].
    #[arg(long, value_name = "LIST")]
    cpus: Option<CpuSet>,
    /// How often every CPU's state is sampled for verdicts, 1ms to 60s [default: 10ms].
    #[arg(long, value_parser = parse_sample_interval)]
    sample_interval: Option<Duration>,
    /// bpffs directory for the pinned maps and links [default: /sys/fs/bpf/ctx].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Directory for ctx-daemon's own files: a refused program's verifier log goes to its
    /// verifier/ [default: /var/lib/ctx].
    #[arg(long)]
    state_dir: Option<PathBuf>,
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
        telemetry_path: args.telemetry_path.clone(),
        web_config_file: args.web_config_file.clone(),
        cpus: args.cpus.clone(),
        sample_interval: args.sample_interval,
        pin_dir: args.pin_dir.clone(),
        housekeeping_affinity: args.no_housekeeping_affinity.then_some(false),
        state_dir: args.state_dir.clone(),
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
    // A bad web config is an error at start, naming the field; never a daemon without auth.
    let web = match &set.web_config_file {
        Some(p) => Arc::new(WebConfig::open(p)?),
        None => Arc::new(WebConfig::plain()),
    };
    if args.check {
        return check(&set, &sys, &web);
    }
    // Fail on missing privileges before binding or attaching anything.
    require_caps(&sys)?;
    if set.housekeeping_affinity
        && let Some(cpus) = service::pin_to_housekeeping(&sys)
    {
        info!(%cpus, "running on housekeeping CPUs only");
    }
    // Bind before attaching: attaching text-patches the kernel and IPIs every CPU, which is
    // not worth doing for a daemon that then cannot serve.
    let (listener, listen) = bind(args, &set)?;

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
        pinwatch::attached_tracepoints(session.probes.meta.hooks_attached),
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
    let http = Http {
        listener,
        listen,
        telemetry_path: set.telemetry_path.clone(),
        web,
        limits,
    };
    serve_until_stopped(sampler, watch, http, logger, &status)?;
    info!(
        "stopped; programs stay attached (pinned) for the next start; `ctx-daemon --detach` removes them"
    );
    Ok(())
}

/// The listening socket: bound here, or passed by systemd (`--web.systemd-socket`).
fn bind(args: &Args, set: &Settings) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = if args.systemd_socket {
        ctx::daemon::socket::systemd_listener()?
    } else {
        TcpListener::bind(set.listen).with_context(|| {
            format!(
                "cannot listen on {}: choose another address with --web.listen-address or \
                 `web.listen-address` in {}",
                set.listen,
                args.config.display()
            )
        })?
    };
    listener.set_nonblocking(true)?;
    let listen = listener.local_addr()?;
    if listen.ip().is_unspecified() {
        info!(
            %listen,
            "listening on every address; narrow it with --web.listen-address 127.0.0.1:{} (or \
             `web.listen-address` in the config) when only local scrapers need it",
            listen.port()
        );
    }
    Ok((listener, listen))
}

/// The capabilities attaching needs, all of them, or an error naming the missing ones.
fn require_caps(sys: &SysRoot) -> anyhow::Result<()> {
    let missing = system::missing_caps(sys.effective_caps()?);
    if missing.is_empty() {
        return Ok(());
    }
    Err(LoadError::Capabilities {
        missing: missing.join(", "),
    }
    .into())
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
            state_dir: set.state_dir.clone(),
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
            // The loader said why, with the verifier log's place, on one line.
            HookStatus::Failed(_) => {}
            s if !s.active() => warn!(hook, status = %s, "hook not in use"),
            _ => {}
        }
    }
    Ok(session)
}

/// The HTTP endpoint, bound and configured.
struct Http {
    listener: TcpListener,
    listen: SocketAddr,
    telemetry_path: String,
    web: Arc<WebConfig>,
    limits: serve::Limits,
}

/// Runs the sampling thread and the HTTP server until SIGTERM or SIGINT.
fn serve_until_stopped(
    sampler: SamplingLoop,
    mut watch: PinWatch,
    http: Http,
    logger: Option<Logger>,
    status: &str,
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
        let listener = tokio::net::TcpListener::from_std(http.listener)?;
        let cfg = http.web.current();
        info!(
            listen = %http.listen,
            tls = cfg.tls_enabled(),
            basic_auth_users = cfg.basic_auth_users(),
            "serving {} and /healthz",
            http.telemetry_path
        );
        service::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
        let app = serve::router_at(shared, &http.telemetry_path);
        serve::serve_with(listener, app, http.limits, http.web, shutdown_signal()).await;
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

/// Every hook's program through the verifier, none attached.
fn print_loadable(set: &Settings, sys: &SysRoot) -> anyhow::Result<()> {
    let opts = LoadOptions {
        pin_dir: None,
        sys: sys.clone(),
        state_dir: Some(set.state_dir.clone()),
    };
    let (hooks, switch) = attach::check(&opts).context("loading ctx's programs to check them")?;
    if let Some(v) = switch {
        println!("sched_switch program: {} ({})", v.program(), v.why());
    }
    for (h, program, verdict) in &hooks {
        println!("hook {}:{} ({program}): {verdict}", h.group, h.tracepoint);
    }
    Ok(())
}

/// `--check`: preflight without attaching.
fn check(set: &Settings, sys: &SysRoot, web: &WebConfig) -> anyhow::Result<()> {
    println!("ctx-daemon {} check", ctx::VERSION);
    println!("kernel: {}", sys.kernel_release());
    println!("listen: {}", set.listen);
    println!("telemetry path: {}", set.telemetry_path);
    let cfg = web.current();
    println!(
        "web config: {} (TLS {}, basic auth users: {})",
        set.web_config_file
            .as_ref()
            .map_or_else(|| "-".into(), |p| p.display().to_string()),
        if cfg.tls_enabled() { "on" } else { "off" },
        cfg.basic_auth_users()
    );
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
    if missing.is_empty() {
        print_loadable(set, sys)?;
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
