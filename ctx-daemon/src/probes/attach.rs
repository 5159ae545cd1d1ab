//! Loading the eBPF object and attaching every hook the kernel has, with feature detection;
//! and the benchmark's baseline programs.

use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use aya::pin::PinError;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{BtfTracePoint, ProgramError, RawTracePoint};
use aya::{Ebpf, EbpfLoader};
use ctx_common::programs::{
    DETECTED_ONLY, HOOKS, HookSpec, Kind, MAP_CONFIG, MAP_CPU, MAP_LEDGER, MAP_META, MAPS, Role,
};
use ctx_common::record::{ABI_VERSION, Config, LEDGER_GLOBAL_ENTRIES, META_MAGIC, Meta};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::host::btf::KernelBtf;
use crate::host::cpuset::CpuSet;
use crate::host::system::{self, SysRoot};
use crate::probes::hooks::{HookReport, HookStatus};
use crate::probes::pins::{link_path, map_path, prepare_pin_dir};
use crate::probes::verify::{self, LogPlace};
use crate::probes::{LoadError, LogSource, MapStep, Probes, check_caps, map_err, pincheck};

/// The eBPF object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ctx"));

/// Why one program could not be loaded or attached.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error("program {program} is not in the eBPF object: this build is broken, rebuild ctx")]
    MissingProgram { program: &'static str },
    #[error("program {program} is not of the type its hook needs: rebuild ctx")]
    WrongType {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the kernel's verifier refused {program}")]
    Verifier {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{program} needs kernel BTF (CONFIG_DEBUG_INFO_BTF=y)")]
    NoBtf { program: &'static str },
    #[error("attaching {program} to {tracepoint}")]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pinning the link of {program} at {path} (the pin directory must be writable)")]
    Pin {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: PinError,
    },
}

impl AttachError {
    /// The verifier's log, when the verifier refused the program.
    pub fn verifier_log(&self) -> Option<String> {
        match self {
            Self::Verifier {
                source: ProgramError::LoadError { verifier_log, .. },
                ..
            } => Some(verifier_log.to_string()),
            _ => None,
        }
    }

    /// The attach failed with ENOENT: the kernel has no such tracepoint. Without BTF to ask
    /// first, that is how absence shows.
    pub fn no_such_tracepoint(&self) -> bool {
        let Self::Attach {
            source: ProgramError::SyscallError(e),
            ..
        } = self
        else {
            return false;
        };
        e.io_error.raw_os_error() == Some(libc::ENOENT)
    }

    /// The error and its causes on one line, for a hook's status.
    pub fn reason(&self) -> String {
        let mut s = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Pin maps and links here, reusing whatever is already pinned there.
    pub pin_dir: Option<PathBuf>,
    pub sys: SysRoot,
    /// The state directory: a refused program's verifier log goes to its `verifier/`
    /// (`None`: to debug level).
    pub state_dir: Option<PathBuf>,
}

/// Which program serves `sched:sched_switch` on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchVariant {
    /// `ctx_sched_switch`: finds the task's user frame with `bpf_task_pt_regs` (5.15 on).
    TaskPtRegs,
    /// `ctx_sched_switch_stack`: finds it from `task->stack`, for older kernels.
    Stack,
}

/// Names the `sched_switch` program to load instead of the one BTF chose, to compare them or to
/// see why one is refused (`ctx-daemon --check`).
pub const SWITCH_PROGRAM_ENV: &str = "CTX_SCHED_SWITCH_PROGRAM";

impl SwitchVariant {
    /// The one [`SWITCH_PROGRAM_ENV`] names, if set to a program name.
    pub fn forced() -> Option<Self> {
        let v = std::env::var(SWITCH_PROGRAM_ENV).ok()?;
        [Self::TaskPtRegs, Self::Stack]
            .into_iter()
            .find(|s| s.program() == v)
    }

    /// The kernel lists its helpers in BTF's `enum bpf_func_id`.
    pub fn of(btf: &KernelBtf) -> Self {
        if btf.enum_has("bpf_func_id", "BPF_FUNC_task_pt_regs") {
            Self::TaskPtRegs
        } else {
            Self::Stack
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            Self::TaskPtRegs => "ctx_sched_switch",
            Self::Stack => "ctx_sched_switch_stack",
        }
    }

    pub fn why(self) -> &'static str {
        if Self::forced() == Some(self) {
            return "named by CTX_SCHED_SWITCH_PROGRAM";
        }
        match self {
            Self::TaskPtRegs => "the kernel has bpf_task_pt_regs",
            Self::Stack => {
                "the kernel has no bpf_task_pt_regs (5.15 on): the task's user frame is found \
                 from task->stack"
            }
        }
    }
}

/// The `THREAD_SIZE` of x86-64, `PAGE_SIZE << (2 + KASAN_STACK_ORDER)`: 16 KiB, 32 KiB with KASAN.
/// No BTF type has that size on Debian's kernels (`union thread_union` is not emitted), so
/// KASAN is told by its report function instead. A wrong guess finds no user segment in the
/// frame and the program falls back to the mode the task left in.
fn thread_size(btf: &KernelBtf) -> u32 {
    const PAGE_SIZE: u32 = 4096;
    let kasan = u32::from(btf.has_name("kasan_report"));
    PAGE_SIZE << (2 + kasan)
}

/// What the kernel offers, before anything is loaded.
struct Detection {
    btf: Option<KernelBtf>,
    /// For `tp_btf` programs.
    aya_btf: Option<aya::Btf>,
    /// Byte offsets of `pt_regs.orig_ax` and `task_struct.pid` for the switch program (0:
    /// unknown, the program stays inert and is not attached).
    orig_ax_off: u32,
    pid_off: u32,
    /// `None` without BTF (no `tp_btf` program loads then).
    switch: Option<SwitchVariant>,
    /// For the stack variant: `task_struct.stack`, `THREAD_SIZE`, `sizeof(pt_regs)`,
    /// `pt_regs.cs` (0: unknown).
    stack_off: u32,
    thread_size: u32,
    regs_size: u32,
    cs_off: u32,
}

impl Detection {
    fn of(sys: &SysRoot) -> Self {
        let btf = match KernelBtf::load(&sys.btf_path()) {
            Ok(b) => Some(b),
            Err(e) => {
                warn!("{e}");
                None
            }
        };
        let offset = |s: &str, m: &str| btf.as_ref().and_then(|b| b.member_offset(s, m));
        Self {
            orig_ax_off: offset("pt_regs", "orig_ax").unwrap_or(0),
            pid_off: offset("task_struct", "pid").unwrap_or(0),
            switch: btf
                .as_ref()
                .map(|b| SwitchVariant::forced().unwrap_or_else(|| SwitchVariant::of(b))),
            stack_off: offset("task_struct", "stack").unwrap_or(0),
            thread_size: btf.as_ref().map_or(0, thread_size),
            regs_size: btf
                .as_ref()
                .and_then(|b| b.struct_size("pt_regs"))
                .unwrap_or(0),
            cs_off: offset("pt_regs", "cs").unwrap_or(0),
            aya_btf: btf.as_ref().and_then(|_| aya::Btf::from_sys_fs().ok()),
            btf,
        }
    }

    /// The program that serves hook `h` here.
    fn program(&self, h: &HookSpec) -> &'static str {
        match (h.role, self.switch) {
            (Role::Switches, Some(v)) => v.program(),
            _ => h.program,
        }
    }

    /// Why the switch program cannot work here, if it cannot.
    fn switch_unusable(&self) -> Option<&'static str> {
        if self.orig_ax_off == 0 || self.pid_off == 0 {
            return Some("no pt_regs.orig_ax or task_struct.pid in BTF (x86 only)");
        }
        if self.switch == Some(SwitchVariant::Stack)
            && (self.stack_off == 0 || self.regs_size == 0 || self.cs_off == 0)
        {
            return Some("no task_struct.stack, pt_regs.cs or sizeof(pt_regs) in BTF");
        }
        None
    }

    fn set_globals<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.override_global("PT_REGS_ORIG_AX_OFF", &self.orig_ax_off, true);
        loader.override_global("TASK_PID_OFF", &self.pid_off, true);
        loader.override_global("TASK_STACK_OFF", &self.stack_off, true);
        loader.override_global("THREAD_SIZE", &self.thread_size, true);
        loader.override_global("PT_REGS_SIZE", &self.regs_size, true);
        loader.override_global("PT_REGS_CS_OFF", &self.cs_off, true);
    }

    /// `None`: unknown (no BTF); try attaching.
    fn tracepoint_exists(&self, name: &str) -> Option<bool> {
        self.btf.as_ref().map(|b| b.has_tracepoint(name))
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    h: &HookSpec,
    program: &'static str,
    pin: Option<&Path>,
    btf: Option<&aya::Btf>,
) -> Result<HookStatus, AttachError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or(AttachError::MissingProgram { program })?;
    let wrong_type = |source| AttachError::WrongType { program, source };
    let verifier = |source| AttachError::Verifier { program, source };
    let attach = |source| AttachError::Attach {
        program,
        tracepoint: h.tracepoint,
        source,
    };
    let link: FdLink = match h.kind {
        Kind::RawTracepoint => {
            let p: &mut RawTracePoint = prog.try_into().map_err(wrong_type)?;
            p.load().map_err(verifier)?;
            let id = p.attach(h.tracepoint).map_err(attach)?;
            if pin.is_none() {
                return Ok(HookStatus::Attached);
            }
            p.take_link(id).map_err(attach)?.into()
        }
        Kind::BtfTracepoint => {
            let btf = btf.ok_or(AttachError::NoBtf { program })?;
            let p: &mut BtfTracePoint = prog.try_into().map_err(wrong_type)?;
            p.load(h.tracepoint, btf).map_err(verifier)?;
            let id = p.attach().map_err(attach)?;
            if pin.is_none() {
                return Ok(HookStatus::Attached);
            }
            p.take_link(id).map_err(attach)?.into()
        }
    };
    if let Some(dir) = pin {
        let path = link_path(dir, h.tracepoint);
        link.pin(&path).map_err(|source| AttachError::Pin {
            program,
            path,
            source,
        })?;
    }
    Ok(HookStatus::Attached)
}

fn detach_one(ebpf: &mut Ebpf, h: &HookSpec, program: &str, pin: Option<&Path>) {
    if let Some(dir) = pin
        && let Ok(l) = PinnedLink::from_pin(link_path(dir, h.tracepoint))
    {
        let _ = l.unpin();
    }
    // Unloading drops the program's unpinned links too.
    if let Some(p) = ebpf.program_mut(program) {
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

/// A hook whose program failed: one WARN line with the hook, the reason in a few words and
/// where the verifier's full log went.
pub(crate) fn failed(
    h: &HookSpec,
    program: &str,
    e: &AttachError,
    state_dir: Option<&Path>,
) -> HookStatus {
    let hook = format!("{}:{}", h.group, h.tracepoint);
    if let Some(log) = e.verifier_log() {
        let reason = verify::reason(&log);
        let place = verify::write_log(state_dir, program, &log);
        warn!(
            hook,
            program,
            reason,
            verifier_log = %place,
            "the verifier refused the program; the hook is not in use"
        );
        if let LogPlace::Debug(_) = place {
            debug!(hook, program, "verifier log:\n{log}");
        }
        HookStatus::Failed(format!("verifier: {reason}"))
    } else {
        let reason = verify::shorten(&e.reason());
        warn!(hook, program, reason, "the hook is not in use");
        HookStatus::Failed(reason)
    }
}

/// Reuses each hook's pinned link or attaches it, in table order.
fn attach_all(
    ebpf: &mut Ebpf,
    det: &Detection,
    pin: Option<&Path>,
    state_dir: Option<&Path>,
) -> HookReport {
    let mut report = HookReport::default();
    for h in &HOOKS {
        let reused = pin.is_some_and(|d| PinnedLink::from_pin(link_path(d, h.tracepoint)).is_ok());
        let status = if reused {
            HookStatus::Reused
        } else {
            match det.tracepoint_exists(h.tracepoint) {
                Some(false) => HookStatus::Absent,
                _ if h.role == Role::Switches && det.switch_unusable().is_some() => {
                    HookStatus::Skipped(det.switch_unusable().unwrap_or_default())
                }
                _ => {
                    let program = det.program(h);
                    if h.role == Role::Switches
                        && let Some(v) = det.switch
                    {
                        info!(hook = "sched:sched_switch", program, "{}", v.why());
                    }
                    match attach_one(ebpf, h, program, pin, det.aya_btf.as_ref()) {
                        Ok(s) => s,
                        Err(e) if det.btf.is_none() && e.no_such_tracepoint() => HookStatus::Absent,
                        Err(e) => failed(h, program, &e, state_dir),
                    }
                }
            }
        };
        report.hooks.push((*h, status));
    }
    for (group, tp) in DETECTED_ONLY {
        let present = det.tracepoint_exists(tp).unwrap_or(false);
        report.detected.push((group, tp, present));
    }
    report
}

/// A paired role with one side missing would corrupt the mirror: drops the other side.
fn drop_half_pairs(ebpf: &mut Ebpf, report: &mut HookReport, pin: Option<&Path>) {
    for role in [Role::ContextTracking, Role::Syscalls] {
        let pair = report.hooks.iter_mut().filter(|(h, _)| h.role == role);
        let (active, inactive): (Vec<_>, Vec<_>) = pair.partition(|(_, s)| s.active());
        if inactive.is_empty() {
            continue;
        }
        for (h, s) in active {
            warn!(
                hook = h.tracepoint,
                "detaching: the other half of its pair is unavailable"
            );
            detach_one(ebpf, h, h.program, pin);
            *s = HookStatus::Skipped("its pair is unavailable");
        }
    }
}

/// Takes one of the object's maps as the type user space reads.
fn take<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    map: &'static str,
) -> Result<T, LoadError> {
    let m = ebpf.take_map(map).ok_or(LoadError::MissingMap { map })?;
    T::try_from(m).map_err(map_err(map, MapStep::Type, None))
}

/// Tells the syscall programs which CPUs context tracking drives. Written after both roles
/// attached; until then a `nohz_full` CPU may count a few syscall transitions, and context
/// tracking's first event takes the CPU over for good anyway.
fn write_config(ebpf: &mut Ebpf, ct_cpus: &CpuSet) -> Result<(), LoadError> {
    let mut cfg = Config::default();
    for c in ct_cpus.iter() {
        cfg.set_ct_cpu(c);
    }
    let mut config: Array<MapData, Config> = take(ebpf, MAP_CONFIG)?;
    config
        .set(0, &cfg, 0)
        .map_err(map_err(MAP_CONFIG, MapStep::Write, None))
}

/// Records who attached, when, and which hooks, for later daemons and viewers. A reused
/// object keeps its original attach time.
fn write_meta(ebpf: &mut Ebpf, report: &HookReport) -> Result<Meta, LoadError> {
    let mut meta_map: Array<MapData, Meta> = take(ebpf, MAP_META)?;
    let mut meta = meta_map
        .get(&0, 0)
        .map_err(map_err(MAP_META, MapStep::Read, None))?;
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
            .map_err(map_err(MAP_META, MapStep::Write, None))?;
    }
    Ok(meta)
}

/// The hotplug program logs (a cold path). When this process loaded it, the ring buffer is in
/// hand; a reused (pinned) program's is found from its id, which takes `CAP_SYS_ADMIN`.
fn log_source(ebpf: &mut Ebpf, report: &HookReport, pin: Option<&Path>) -> LogSource {
    let log_hook = "cpuhp_enter";
    match report.status(log_hook) {
        Some(HookStatus::Attached) => aya_log::EbpfLogger::init(ebpf)
            .map_or(LogSource::None, |l| LogSource::Reader(Box::new(l))),
        Some(HookStatus::Reused) => pin
            .and_then(|dir| PinnedLink::from_pin(link_path(dir, log_hook)).ok())
            .and_then(|l| FdLink::from(l).info().ok())
            .map_or(LogSource::None, |i| LogSource::ProgramId(i.program_id())),
        _ => LogSource::None,
    }
}

/// Loads the programs and attaches every hook the kernel has, reusing links pinned in
/// `opts.pin_dir`. Degrades per hook; fails only when no hook can report mode transitions.
pub fn load(opts: &LoadOptions) -> Result<Probes, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    check_caps(&opts.sys)?;
    let det = Detection::of(&opts.sys);
    let ct_layout = det.btf.as_ref().and_then(KernelBtf::ct_layout);
    let pin = opts.pin_dir.as_deref();
    let possible = opts.sys.possible()?;
    let ncpu = possible.max().map_or(1, |m| m + 1);
    let repaired = match pin {
        Some(dir) => {
            prepare_pin_dir(dir)?;
            pincheck::reconcile(dir, OBJECT, ncpu + LEDGER_GLOBAL_ENTRIES)?
        }
        None => None,
    };
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_LEDGER, ncpu + LEDGER_GLOBAL_ENTRIES);
    det.set_globals(&mut loader);
    let map_paths: Vec<(&str, PathBuf)> = pin.map_or_else(Vec::new, |dir| {
        MAPS.iter().map(|n| (*n, map_path(dir, n))).collect()
    });
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|source| LoadError::Object { source })?;

    let mut report = attach_all(&mut ebpf, &det, pin, opts.state_dir.as_deref());
    drop_half_pairs(&mut ebpf, &mut report, pin);
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

    let ct_cpus = if report.role_active(Role::ContextTracking) {
        opts.sys.nohz_full().intersection(&possible)
    } else {
        CpuSet::new()
    };
    write_config(&mut ebpf, &ct_cpus)?;
    let meta = write_meta(&mut ebpf, &report)?;
    if let Some(dir) = pin {
        pincheck::record_map_ids(dir)?;
    }
    let cpu: PerCpuArray<MapData, _> = take(&mut ebpf, MAP_CPU)?;
    let ledger = match ebpf.take_map(MAP_LEDGER) {
        Some(m) => Some(Array::try_from(m).map_err(map_err(MAP_LEDGER, MapStep::Type, None))?),
        None => None,
    };
    let logs = log_source(&mut ebpf, &report, pin);
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
        pin_dir: opts.pin_dir.clone(),
        ct_layout,
        ct_cpus,
        repaired,
    })
}

/// What `ctx-daemon --check` found of one hook's program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loadable {
    /// The verifier accepted it (nothing was attached).
    Yes,
    /// Refused or not loadable; the few words of [`failed`].
    Failed(String),
    /// The kernel has no such tracepoint.
    Absent,
    Skipped(&'static str),
}

impl std::fmt::Display for Loadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Yes => f.write_str("loadable"),
            Self::Failed(why) => write!(f, "failed: {why}"),
            Self::Absent => f.write_str("absent"),
            Self::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// Each hook with the program that serves it here and what `--check` found; and the
/// `sched_switch` program this kernel gets (`None` without BTF).
pub type Checked = (
    Vec<(HookSpec, &'static str, Loadable)>,
    Option<SwitchVariant>,
);

/// Loads every hook's program into the kernel (the verifier runs) and attaches none, for
/// `--check`; each is unloaded again when the result is dropped. Also says which
/// `sched_switch` program this kernel gets, and why.
pub fn check(opts: &LoadOptions) -> Result<Checked, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    check_caps(&opts.sys)?;
    let det = Detection::of(&opts.sys);
    let mut loader = EbpfLoader::new();
    det.set_globals(&mut loader);
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|source| LoadError::Object { source })?;
    let mut out = Vec::new();
    for h in &HOOKS {
        let program = det.program(h);
        let verdict = match det.tracepoint_exists(h.tracepoint) {
            Some(false) => Loadable::Absent,
            _ if h.role == Role::Switches && det.switch_unusable().is_some() => {
                Loadable::Skipped(det.switch_unusable().unwrap_or_default())
            }
            _ => match load_only(&mut ebpf, h, program, det.aya_btf.as_ref()) {
                Ok(()) => Loadable::Yes,
                Err(e) => match failed(h, program, &e, opts.state_dir.as_deref()) {
                    HookStatus::Failed(why) => Loadable::Failed(why),
                    other => Loadable::Failed(other.to_string()),
                },
            },
        };
        out.push((*h, program, verdict));
    }
    Ok((out, det.switch))
}

/// Loads one program, attaching nothing.
fn load_only(
    ebpf: &mut Ebpf,
    h: &HookSpec,
    program: &'static str,
    btf: Option<&aya::Btf>,
) -> Result<(), AttachError> {
    let prog = ebpf
        .program_mut(program)
        .ok_or(AttachError::MissingProgram { program })?;
    let wrong_type = |source| AttachError::WrongType { program, source };
    let verifier = |source| AttachError::Verifier { program, source };
    match h.kind {
        Kind::RawTracepoint => {
            let p: &mut RawTracePoint = prog.try_into().map_err(wrong_type)?;
            p.load().map_err(verifier)
        }
        Kind::BtfTracepoint => {
            let btf = btf.ok_or(AttachError::NoBtf { program })?;
            let p: &mut BtfTracePoint = prog.try_into().map_err(wrong_type)?;
            p.load(h.tracepoint, btf).map_err(verifier)
        }
    }
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
/// `ctx_empty_switch` to `sched_switch`.
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
    let program = match which {
        Baseline::Empty => "ctx_empty",
        Baseline::Clock => "ctx_clock",
    };
    let baseline = |source| LoadError::Baseline { source };
    let raw: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or(baseline(AttachError::MissingProgram { program }))?
        .try_into()
        .map_err(|source| baseline(AttachError::WrongType { program, source }))?;
    raw.load()
        .map_err(|source| baseline(AttachError::Verifier { program, source }))?;
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

#[cfg(test)]
mod tests {
    use std::io;

    use aya::sys::SyscallError;

    use super::*;
    use crate::test_util::printed_once;

    fn syscall(errno: i32) -> ProgramError {
        ProgramError::SyscallError(SyscallError {
            call: "bpf_raw_tracepoint_open",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    /// The host kernel (6.18) has `bpf_task_pt_regs` and no KASAN.
    #[test]
    fn switch_variant_and_thread_size_from_host_btf() {
        let Ok(b) = KernelBtf::load(Path::new("/sys/kernel/btf/vmlinux")) else {
            eprintln!("skipped: no readable /sys/kernel/btf/vmlinux on this host");
            return;
        };
        assert_eq!(SwitchVariant::of(&b), SwitchVariant::TaskPtRegs);
        assert_eq!(SwitchVariant::of(&b).program(), "ctx_sched_switch");
        if cfg!(target_arch = "x86_64") && !b.has_name("kasan_report") {
            assert_eq!(thread_size(&b), 16384);
        }
        assert!(SwitchVariant::Stack.why().contains("no bpf_task_pt_regs"));
    }

    #[test]
    fn the_object_declares_every_pinned_map_with_the_shared_layouts() {
        if OBJECT.is_empty() {
            return;
        }
        let want = pincheck::declared(OBJECT, 10).unwrap();
        assert_eq!(want.len(), MAPS.len());
        let cpu = want[MAP_CPU];
        assert_eq!(cpu.value_size as usize, size_of::<ctx_common::CpuRecord>());
        assert_eq!(want[MAP_META].value_size as usize, size_of::<Meta>());
        assert_eq!(want[MAP_LEDGER].max_entries, 10);
    }

    #[test]
    fn absence_is_told_by_errno_not_by_message() {
        let attach = |source| AttachError::Attach {
            program: "ctx_user_enter",
            tracepoint: "user_enter",
            source,
        };
        assert!(attach(syscall(libc::ENOENT)).no_such_tracepoint());
        assert!(!attach(syscall(libc::EPERM)).no_such_tracepoint());
        assert!(
            !AttachError::NoBtf {
                program: "ctx_sched_switch"
            }
            .no_such_tracepoint()
        );
    }

    #[test]
    fn attach_errors_name_the_program_and_print_each_cause_once() {
        let e = AttachError::Attach {
            program: "ctx_user_enter",
            tracepoint: "user_enter",
            source: syscall(libc::ENOENT),
        };
        let reason = e.reason();
        let shown = printed_once(e);
        assert_eq!(
            shown, reason,
            "a hook's status reads as the binaries print errors"
        );
        assert!(
            shown.contains("ctx_user_enter") && shown.contains("No such file"),
            "{shown}"
        );
        for e in [
            AttachError::MissingProgram {
                program: "ctx_empty",
            },
            AttachError::NoBtf {
                program: "ctx_sched_switch",
            },
            AttachError::Verifier {
                program: "ctx_sched_switch",
                source: syscall(libc::EINVAL),
            },
        ] {
            printed_once(e);
        }
    }
}
