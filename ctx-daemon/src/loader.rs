//! Loading and attaching the eBPF programs, with feature detection, and reusing a running
//! daemon's pinned maps and links.
//!
//! Attaching the context_tracking tracepoints text-patches the kernel, which sends IPIs to
//! every CPU, isolated ones included. So a daemon pins its maps and links under a directory of
//! bpffs, and a later daemon (or ctxtop) reuses them instead of attaching again.

use std::path::{Path, PathBuf};
use std::{fs, io};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{BtfTracePoint, RawTracePoint};
use aya::{Ebpf, EbpfLoader};
use ctx_common::record::{ABI_VERSION, Config, CpuRecord, Ledger, META_MAGIC, Meta};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::btf::{CtLayout, KernelBtf};
use crate::hooks::{DETECTED_ONLY, HOOKS, HookReport, HookSpec, HookStatus, Kind, Role};
use crate::system::{self, BPF_FS_MAGIC, CpuSet, SysRoot};

/// The eBPF object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ctx"));

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ctx";

const MAP_CPU: &str = "CTX_CPU";
const MAP_CONFIG: &str = "CTX_CONFIG";
const MAP_META: &str = "CTX_META";
const MAP_LEDGER: &str = "CTX_LEDGER";
const MAP_LOGS: &str = "AYA_LOGS";
const MAP_TASK_MODE: &str = "TASK_MODE";
const PINNED_MAPS: [&str; 6] = [
    MAP_CPU,
    MAP_CONFIG,
    MAP_META,
    MAP_LEDGER,
    MAP_LOGS,
    MAP_TASK_MODE,
];

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "missing capabilities {missing}: run as root, or grant CAP_BPF and CAP_PERFMON \
         (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON)"
    )]
    Capabilities { missing: String },
    #[error("this build has no eBPF object (built with CTX_SKIP_EBPF=1): rebuild without it")]
    NoObject,
    #[error("loading the eBPF object into the kernel failed")]
    Object {
        #[source]
        source: aya::EbpfError,
    },
    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pin directory {dir}: {reason}")]
    PinDir { dir: PathBuf, reason: String },
    #[error(
        "pinned maps in {dir} are from an incompatible ctx (ABI {found}, this build uses \
         {ABI_VERSION}): remove them with `ctx-daemon --detach --pin-dir {dir}`"
    )]
    IncompatiblePins { dir: PathBuf, found: u32 },
    #[error(
        "no hook can report user/kernel transitions ({detail}); ctx needs \
         context_tracking:user_enter/user_exit or raw_syscalls:sys_enter/sys_exit"
    )]
    NoModeSource { detail: String },
    #[error(transparent)]
    Sys(#[from] system::SysReadError),
}

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    let what = what.into();
    move |source| LoadError::Map { what, source }
}

/// Where the probes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This process loaded and attached them.
    Loaded,
    /// Reused from pins left by a ctx-daemon.
    Pinned,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::Pinned => "pinned",
        }
    }
}

/// Where the eBPF side's log records (aya-log) can be read from.
pub enum LogSource {
    None,
    /// This process loaded the logging program: its ring buffer, ready to read.
    Reader(Box<aya_log::EbpfLogger<&'static dyn log::Log>>),
    /// A reused program; opening its ring buffer by program id needs CAP_SYS_ADMIN.
    ProgramId(u32),
}

/// The attached programs and the maps user space reads.
pub struct Probes {
    /// Owns unpinned programs and links: dropping it detaches them.
    _ebpf: Option<Ebpf>,
    /// The cold-path log records of the eBPF side (aya-log), when they can be read.
    pub logs: LogSource,
    /// Taken by the sampler; see [`Probes::take_cpu_map`].
    cpu: Option<PerCpuArray<MapData, CpuRecord>>,
    pub ledger: Option<Array<MapData, Ledger>>,
    pub meta: Meta,
    pub hooks: HookReport,
    pub origin: Origin,
    pub pin_dir: Option<PathBuf>,
    pub ct_layout: Option<CtLayout>,
    /// CPUs the loader told the programs are driven by context tracking.
    pub ct_cpus: CpuSet,
}

impl Probes {
    /// The per-CPU record map, for the sampler. `None` once taken.
    pub fn take_cpu_map(&mut self) -> Option<PerCpuArray<MapData, CpuRecord>> {
        self.cpu.take()
    }

    pub fn hooks_summary(&self) -> String {
        self.hooks
            .hooks
            .iter()
            .map(|(h, s)| format!("{}:{}={}", h.group, h.tracepoint, s.label()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Pin maps and links here, reusing whatever is already pinned there.
    pub pin_dir: Option<PathBuf>,
    pub sys: SysRoot,
}

fn check_caps(sys: &SysRoot) -> Result<(), LoadError> {
    let missing = system::missing_caps(sys.effective_caps()?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Capabilities {
            missing: missing.join(", "),
        })
    }
}

fn pin_err(dir: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::PinDir {
        dir: dir.to_owned(),
        reason: reason.into(),
    }
}

/// Makes sure `dir` can hold pins: on bpffs, existing, writable. Mounts bpffs at /sys/fs/bpf
/// when that is where the pins go and nothing is mounted there (systemd normally mounts it;
/// minimal systems and containers may not).
fn prepare_pin_dir(dir: &Path) -> Result<(), LoadError> {
    let bpffs_root = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpffs_root) && !system::fs_magic_is(bpffs_root, BPF_FS_MAGIC) {
        info!("bpffs is not mounted at /sys/fs/bpf; mounting it");
        let rc = mount_bpffs(bpffs_root);
        if rc != 0 {
            return Err(pin_err(
                dir,
                format!(
                    "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({}): run \
                     `mount -t bpf bpf /sys/fs/bpf` as root",
                    io::Error::last_os_error()
                ),
            ));
        }
    }
    for sub in ["maps", "links"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| {
            pin_err(
                dir,
                format!("cannot create {sub}/ ({e}): the pin directory must be writable by ctx"),
            )
        })?;
    }
    if !system::fs_magic_is(dir, BPF_FS_MAGIC) {
        return Err(pin_err(
            dir,
            "not on a bpf filesystem: choose a directory under /sys/fs/bpf",
        ));
    }
    // Pinning is a create in the directory: check we may write there before touching the
    // kernel, so the error names the directory rather than a failed BPF_OBJ_PIN.
    // bpffs refuses names with dots.
    let probe = dir.join("links").join("ctx-write-check");
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(pin_err(
            dir,
            format!(
                "not writable ({e}): give the ctx user write access or choose another --pin-dir"
            ),
        )),
    }
}

fn mount_bpffs(at: &Path) -> i32 {
    let Ok(target) = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()) else {
        return -1;
    };
    // SAFETY: valid C strings; mount(2) with no data.
    unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    }
}

fn read_meta(map: Map, dir: &Path) -> Result<Meta, LoadError> {
    let arr: Array<MapData, Meta> =
        Array::try_from(map).map_err(map_err(format!("{MAP_META} in {}", dir.display())))?;
    arr.get(&0, 0)
        .map_err(map_err(format!("reading {MAP_META} in {}", dir.display())))
}

fn validate_meta(meta: &Meta, dir: &Path) -> Result<(), LoadError> {
    if meta.magic == 0 {
        // Created but never written: a loader died before finishing; reusable.
        return Ok(());
    }
    if meta.magic != META_MAGIC || meta.abi != ABI_VERSION {
        return Err(LoadError::IncompatiblePins {
            dir: dir.to_owned(),
            found: meta.abi,
        });
    }
    Ok(())
}

/// Opens a daemon's pinned maps read-only, without loading or attaching anything. `None` when
/// nothing is pinned there.
pub fn open_pinned(dir: &Path, sys: &SysRoot) -> Result<Option<Probes>, LoadError> {
    let meta_path = dir.join("maps").join(MAP_META);
    if !meta_path.exists() {
        return Ok(None);
    }
    check_caps(sys)?;
    let open = |name: &str| {
        MapData::from_pin(dir.join("maps").join(name)).map_err(map_err(format!(
            "opening pinned {name} in {}",
            dir.display()
        )))
    };
    let meta = read_meta(Map::Array(open(MAP_META)?), dir)?;
    validate_meta(&meta, dir)?;
    if meta.magic == 0 {
        return Ok(None);
    }
    let cpu = PerCpuArray::try_from(Map::PerCpuArray(open(MAP_CPU)?)).map_err(map_err(MAP_CPU))?;
    let config: Array<MapData, Config> =
        Array::try_from(Map::Array(open(MAP_CONFIG)?)).map_err(map_err(MAP_CONFIG))?;
    let cfg = config.get(&0, 0).map_err(map_err(MAP_CONFIG))?;
    let possible = sys.possible()?;
    let ct_cpus = possible.iter().filter(|c| cfg.ct_cpu(*c)).collect();
    let mut hooks = HookReport::default();
    for (i, h) in HOOKS.iter().enumerate() {
        let linked = dir.join("links").join(h.tracepoint).exists();
        let status = if meta.hooks_attached & (1 << i) != 0 && linked {
            HookStatus::Reused
        } else if meta.hooks_attached & (1 << i) != 0 {
            HookStatus::Failed("pinned link missing".into())
        } else {
            HookStatus::Skipped("not attached by the daemon")
        };
        hooks.hooks.push((*h, status));
    }
    Ok(Some(Probes {
        _ebpf: None,
        logs: LogSource::None,
        cpu: Some(cpu),
        ledger: None,
        meta,
        hooks,
        origin: Origin::Pinned,
        pin_dir: Some(dir.to_owned()),
        ct_layout: None,
        ct_cpus,
    }))
}

/// What the kernel offers, before anything is loaded.
struct Detection {
    btf: Option<KernelBtf>,
}

impl Detection {
    /// `None`: unknown (no BTF); try attaching.
    fn tracepoint_exists(&self, name: &str) -> Option<bool> {
        self.btf.as_ref().map(|b| b.has_tracepoint(name))
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    h: &HookSpec,
    pin: Option<&Path>,
    btf: Option<&aya::Btf>,
) -> Result<HookStatus, String> {
    let prog = ebpf
        .program_mut(h.program)
        .ok_or_else(|| format!("program {} missing from the object", h.program))?;
    let link: FdLink = match h.kind {
        Kind::RawTracepoint => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
            p.load().map_err(|e| format!("verifier: {e}"))?;
            let id = p.attach(h.tracepoint).map_err(|e| format!("{e}"))?;
            if pin.is_none() {
                return Ok(HookStatus::Attached);
            }
            p.take_link(id).map_err(|e| format!("{e}"))?.into()
        }
        Kind::BtfTracepoint => {
            let btf = btf.ok_or("needs kernel BTF")?;
            let p: &mut BtfTracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
            p.load(h.tracepoint, btf)
                .map_err(|e| format!("verifier: {e}"))?;
            let id = p.attach().map_err(|e| format!("{e}"))?;
            if pin.is_none() {
                return Ok(HookStatus::Attached);
            }
            p.take_link(id).map_err(|e| format!("{e}"))?.into()
        }
    };
    if let Some(dir) = pin {
        link.pin(dir.join("links").join(h.tracepoint))
            .map_err(|e| format!("pinning link: {e}"))?;
    }
    Ok(HookStatus::Attached)
}

fn detach_one(ebpf: &mut Ebpf, h: &HookSpec, pin: Option<&Path>) {
    if let Some(dir) = pin
        && let Ok(l) = PinnedLink::from_pin(dir.join("links").join(h.tracepoint))
    {
        let _ = l.unpin();
    }
    // Unloading drops the program's unpinned links too.
    if let Some(p) = ebpf.program_mut(h.program) {
        match h.kind {
            Kind::RawTracepoint => {
                if let Ok(p) = <&mut RawTracePoint>::try_from(p) {
                    let _ = p.unload();
                }
            }
            Kind::BtfTracepoint => {
                if let Ok(p) = <&mut BtfTracePoint>::try_from(p) {
                    let _ = p.unload();
                }
            }
        }
    }
}

/// Loads the programs and attaches every hook the kernel has, reusing links pinned in
/// `opts.pin_dir`. Degrades per hook; fails only when no hook can report mode transitions.
pub fn load(opts: &LoadOptions) -> Result<Probes, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    check_caps(&opts.sys)?;
    let btf_path = opts.sys.btf_path();
    let btf = match KernelBtf::load(&btf_path) {
        Ok(b) => Some(b),
        Err(e) => {
            warn!("{e}");
            None
        }
    };
    let ct_layout = btf.as_ref().and_then(KernelBtf::ct_layout);
    // The switch program reads one field of the next task's saved registers; its offset comes
    // from this kernel's BTF (0 leaves the program inert).
    let orig_ax_off = btf
        .as_ref()
        .and_then(|b| b.member_offset("pt_regs", "orig_ax"))
        .unwrap_or(0);
    let pid_off = btf
        .as_ref()
        .and_then(|b| b.member_offset("task_struct", "pid"))
        .unwrap_or(0);
    let aya_btf = if btf.is_some() {
        aya::Btf::from_sys_fs().ok()
    } else {
        None
    };
    let det = Detection { btf };
    let pin = opts.pin_dir.as_deref();
    if let Some(dir) = pin {
        prepare_pin_dir(dir)?;
        let meta_path = dir.join("maps").join(MAP_META);
        if meta_path.exists() {
            let md = MapData::from_pin(&meta_path)
                .map_err(map_err(format!("opening pinned {MAP_META}")))?;
            validate_meta(&read_meta(Map::Array(md), dir)?, dir)?;
        }
    }

    let possible = opts.sys.possible()?;
    let ncpu = possible.max().map_or(1, |m| m + 1);
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_LEDGER, ncpu + crate::ledger::GLOBAL_ENTRIES);
    loader.override_global("PT_REGS_ORIG_AX_OFF", &orig_ax_off, true);
    loader.override_global("TASK_PID_OFF", &pid_off, true);
    let map_paths: Vec<(&str, PathBuf)> = match pin {
        Some(dir) => PINNED_MAPS
            .iter()
            .map(|n| (*n, dir.join("maps").join(n)))
            .collect(),
        None => Vec::new(),
    };
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|source| LoadError::Object { source })?;

    let mut report = HookReport::default();
    for h in HOOKS.iter() {
        let linked = pin.map(|d| d.join("links").join(h.tracepoint));
        let status = if linked
            .as_ref()
            .is_some_and(|p| PinnedLink::from_pin(p).is_ok())
        {
            HookStatus::Reused
        } else {
            match det.tracepoint_exists(h.tracepoint) {
                Some(false) => HookStatus::Absent,
                _ if h.tracepoint == "sched_switch" && (orig_ax_off == 0 || pid_off == 0) => {
                    HookStatus::Skipped("no pt_regs.orig_ax or task_struct.pid in BTF (x86 only)")
                }
                _ => match attach_one(&mut ebpf, h, pin, aya_btf.as_ref()) {
                    Ok(s) => s,
                    // Without BTF, absence shows up as ENOENT from the attach.
                    Err(e) if det.btf.is_none() && e.contains("No such file") => HookStatus::Absent,
                    Err(e) => HookStatus::Failed(e),
                },
            }
        };
        report.hooks.push((*h, status));
    }
    // A paired role with one side missing would corrupt the mirror: drop the other side.
    for role in [Role::ContextTracking, Role::Syscalls] {
        let pair: Vec<usize> = (0..report.hooks.len())
            .filter(|i| report.hooks[*i].0.role == role)
            .collect();
        if pair.iter().any(|i| !report.hooks[*i].1.active())
            && pair.iter().any(|i| report.hooks[*i].1.active())
        {
            for i in &pair {
                if report.hooks[*i].1.active() {
                    let h = report.hooks[*i].0;
                    warn!(
                        hook = h.tracepoint,
                        "detaching: the other half of its pair is unavailable"
                    );
                    detach_one(&mut ebpf, &h, pin);
                    report.hooks[*i].1 = HookStatus::Skipped("its pair is unavailable");
                }
            }
        }
    }
    for (group, tp) in DETECTED_ONLY {
        let present = det.tracepoint_exists(tp).unwrap_or(false);
        report.detected.push((group, tp, present));
    }
    if !report.role_active(Role::ContextTracking) && !report.role_active(Role::Syscalls) {
        let detail = report
            .hooks
            .iter()
            .filter(|(h, _)| h.role.paired())
            .map(|(h, s)| format!("{}:{} {s}", h.group, h.tracepoint))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(LoadError::NoModeSource { detail });
    }

    // Tell the syscall programs which CPUs context tracking drives. Written after both roles
    // attached; until then a nohz_full CPU may count a few syscall transitions, and context
    // tracking's first event takes the CPU over for good anyway.
    let mut ct_cpus = CpuSet::new();
    if report.role_active(Role::ContextTracking) {
        ct_cpus = opts.sys.nohz_full().intersection(&possible);
    }
    let mut cfg = Config::default();
    for c in ct_cpus.iter() {
        cfg.set_ct_cpu(c);
    }
    let mut config: Array<MapData, Config> =
        Array::try_from(ebpf.take_map(MAP_CONFIG).ok_or_else(|| {
            map_err(MAP_CONFIG)(aya::maps::MapError::InvalidName {
                name: MAP_CONFIG.into(),
            })
        })?)
        .map_err(map_err(MAP_CONFIG))?;
    config
        .set(0, &cfg, 0)
        .map_err(map_err(format!("writing {MAP_CONFIG}")))?;

    let mut meta_map: Array<MapData, Meta> =
        Array::try_from(ebpf.take_map(MAP_META).ok_or_else(|| {
            map_err(MAP_META)(aya::maps::MapError::InvalidName {
                name: MAP_META.into(),
            })
        })?)
        .map_err(map_err(MAP_META))?;
    let mut meta = meta_map.get(&0, 0).map_err(map_err(MAP_META))?;
    let attached_now = report
        .hooks
        .iter()
        .any(|(_, s)| matches!(s, HookStatus::Attached));
    if meta.magic == 0 || attached_now {
        if meta.magic == 0 {
            meta.attached_at_ns = system::realtime_now_ns();
            meta.attached_mono_ns = system::mono_now_ns();
            meta.attached_by_pid = std::process::id();
        }
        meta.magic = META_MAGIC;
        meta.abi = ABI_VERSION;
        meta.hooks_attached = report.attached_mask();
        meta_map
            .set(0, &meta, 0)
            .map_err(map_err(format!("writing {MAP_META}")))?;
    }

    let cpu = PerCpuArray::try_from(ebpf.take_map(MAP_CPU).ok_or_else(|| {
        map_err(MAP_CPU)(aya::maps::MapError::InvalidName {
            name: MAP_CPU.into(),
        })
    })?)
    .map_err(map_err(MAP_CPU))?;
    let ledger = match ebpf.take_map(MAP_LEDGER) {
        Some(m) => Some(Array::try_from(m).map_err(map_err(MAP_LEDGER))?),
        None => None,
    };
    // The hotplug program logs (a cold path). When this process loaded it, the ring buffer is
    // in hand; a reused (pinned) program's is found from its id, which takes CAP_SYS_ADMIN.
    let log_hook = "cpuhp_enter";
    let logs = match report.status(log_hook) {
        Some(HookStatus::Attached) => aya_log::EbpfLogger::init(&mut ebpf)
            .map(|l| LogSource::Reader(Box::new(l)))
            .unwrap_or(LogSource::None),
        Some(HookStatus::Reused) => pin
            .and_then(|dir| PinnedLink::from_pin(dir.join("links").join(log_hook)).ok())
            .and_then(|l| FdLink::from(l).info().ok())
            .map_or(LogSource::None, |i| LogSource::ProgramId(i.program_id())),
        _ => LogSource::None,
    };
    for (h, s) in &report.hooks {
        debug!(hook = h.tracepoint, group = h.group, status = %s, "hook");
    }
    Ok(Probes {
        _ebpf: Some(ebpf),
        logs,
        cpu: Some(cpu),
        ledger,
        meta,
        hooks: report,
        origin: Origin::Loaded,
        pin_dir: opts.pin_dir.clone(),
        ct_layout,
        ct_cpus,
    })
}

/// Empty programs attached to every hook ctx would use, for the benchmark's baseline. Dropping
/// it detaches them.
pub struct EmptyProbes {
    _ebpf: Ebpf,
    pub attached: Vec<&'static str>,
}

/// Which baseline program [`load_baseline`] attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// `ctx_empty`: returns at once.
    Empty,
    /// `ctx_clock`: reads the clock (`bpf_ktime_get_ns`), as every timestamping program must.
    Clock,
}

/// Attaches a baseline program to each raw tracepoint of [`HOOKS`] the kernel has, and
/// `ctx_empty_switch` to sched_switch.
pub fn load_baseline(sys: &SysRoot, which: Baseline) -> Result<EmptyProbes, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    check_caps(sys)?;
    let btf = KernelBtf::load(&sys.btf_path()).ok();
    let aya_btf = aya::Btf::from_sys_fs().ok();
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|source| LoadError::Object { source })?;
    let mut attached = Vec::new();
    let name = match which {
        Baseline::Empty => "ctx_empty",
        Baseline::Clock => "ctx_clock",
    };
    let raw: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::NoObject)?
        .try_into()
        .map_err(|e| LoadError::Object {
            source: aya::EbpfError::ProgramError(e),
        })?;
    raw.load().map_err(|e| LoadError::Object {
        source: aya::EbpfError::ProgramError(e),
    })?;
    for h in HOOKS.iter().filter(|h| h.kind == Kind::RawTracepoint) {
        if btf
            .as_ref()
            .is_some_and(|b| !b.has_tracepoint(h.tracepoint))
        {
            continue;
        }
        if raw.attach(h.tracepoint).is_ok() {
            attached.push(h.tracepoint);
        }
    }
    if let Some(b) = aya_btf.as_ref()
        && let Some(p) = ebpf.program_mut("ctx_empty_switch")
        && let Ok(p) = <&mut BtfTracePoint>::try_from(p)
        && p.load("sched_switch", b).is_ok()
        && p.attach().is_ok()
    {
        attached.push("sched_switch");
    }
    Ok(EmptyProbes {
        _ebpf: ebpf,
        attached,
    })
}

/// What `detach` removed.
#[derive(Debug, Default)]
pub struct DetachReport {
    pub links: usize,
    pub maps: usize,
}

/// Removes every pin under `dir`: the links detach once no process holds them, and the maps
/// are freed with their last reference.
pub fn detach(dir: &Path) -> Result<DetachReport, LoadError> {
    let mut rep = DetachReport::default();
    if !dir.exists() {
        return Ok(rep);
    }
    for h in HOOKS.iter() {
        let p = dir.join("links").join(h.tracepoint);
        if p.exists() {
            fs::remove_file(&p)
                .map_err(|e| pin_err(dir, format!("removing {}: {e}", p.display())))?;
            rep.links += 1;
        }
    }
    for m in PINNED_MAPS {
        let p = dir.join("maps").join(m);
        if p.exists() {
            fs::remove_file(&p)
                .map_err(|e| pin_err(dir, format!("removing {}: {e}", p.display())))?;
            rep.maps += 1;
        }
    }
    for sub in ["links", "maps", ""] {
        let _ = fs::remove_dir(dir.join(sub));
    }
    Ok(rep)
}
