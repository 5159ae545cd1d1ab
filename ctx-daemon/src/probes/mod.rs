//! The first stage: ctx's eBPF programs in the kernel, and the maps user space reads.
//!
//! * [`attach`]: load the object and attach every hook the kernel has (with feature detection),
//!   or the benchmark's baseline programs.
//! * [`pincheck`]: pinned maps and links compared with this build before reuse; a mismatch is
//!   repaired by a clean re-attach.
//! * [`pins`]: a daemon's pinned maps and links, reused instead of attaching again, and removed
//!   by `ctx-daemon --detach`.
//! * [`hooks`]: what became of each hook of the table in `ctx_common::programs`.
//! * [`verify`]: a refused program's reason in a few words, and its full verifier log on disk.
//!
//! Attaching the context_tracking tracepoints text-patches the kernel, which sends IPIs to
//! every CPU, isolated ones included. So a daemon pins its maps and links under a directory of
//! bpffs, and a later daemon (or ctxtop) reuses them instead of attaching again.

pub mod attach;
pub mod hooks;
pub mod pincheck;
pub mod pins;
pub mod verify;

use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{Array, MapData, MapError, PerCpuArray};
use ctx_common::record::{ABI_VERSION, CpuRecord, Ledger, Meta};
use thiserror::Error;

use crate::host::btf::CtLayout;
use crate::host::cpuset::CpuSet;
use crate::host::system::{self, SysReadError, SysRoot};
use crate::probes::attach::AttachError;
use crate::probes::hooks::HookReport;

/// Where a daemon pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ctx";

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "missing capabilities {missing}: run as root, or grant CAP_BPF and CAP_PERFMON \
         (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON)"
    )]
    Capabilities { missing: String },
    #[error("this build has no eBPF object (built with CTX_SKIP_EBPF=1): rebuild without it")]
    NoObject,
    #[error(
        "loading the eBPF object into the kernel failed (`ctx-daemon --check` lists what this \
         kernel lacks)"
    )]
    Object {
        #[source]
        source: aya::EbpfError,
    },
    #[error("{}", map_message(.map, *.step, .dir.as_deref()))]
    Map {
        map: &'static str,
        step: MapStep,
        /// The pin directory, for pinned maps.
        dir: Option<PathBuf>,
        #[source]
        source: MapError,
    },
    #[error("the eBPF object has no map {map}: this build is broken, rebuild ctx")]
    MissingMap { map: &'static str },
    #[error("loading the benchmark's baseline programs")]
    Baseline {
        #[source]
        source: AttachError,
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
    Sys(#[from] SysReadError),
}

/// What was done to a map when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapStep {
    /// Opening its pin.
    Open,
    /// Taking it as the type this build reads (its type, key and value sizes).
    Type,
    Read,
    Write,
}

fn map_message(map: &str, step: MapStep, dir: Option<&Path>) -> String {
    // Pins that do not open or do not fit are left from another ctx build or half removed;
    // the object's own maps do not fit only if this build is broken.
    let stale = |what: &str| match dir {
        Some(d) => format!(
            "{what} the pinned map {map} in {}: remove the pins with `ctx-daemon --detach \
             --pin-dir {}` and start again",
            d.display(),
            d.display()
        ),
        None => format!("{what} the eBPF object's map {map}: this build is broken, rebuild ctx"),
    };
    match step {
        MapStep::Open => stale("cannot open"),
        MapStep::Type => stale("this ctx cannot read"),
        MapStep::Read | MapStep::Write => format!(
            "{} map {map} failed: if its pin was removed or replaced, restart ctx-daemon",
            if step == MapStep::Read {
                "reading"
            } else {
                "writing"
            }
        ),
    }
}

/// A map error of `map`, for `map_err`.
fn map_err(
    map: &'static str,
    step: MapStep,
    dir: Option<&Path>,
) -> impl FnOnce(MapError) -> LoadError {
    let dir = dir.map(Path::to_owned);
    move |source| LoadError::Map {
        map,
        step,
        dir,
        source,
    }
}

/// Where the eBPF side's log records (aya-log) can be read from.
pub enum LogSource {
    None,
    /// This process loaded the logging program: its ring buffer, ready to read.
    Reader(Box<aya_log::EbpfLogger<&'static dyn log::Log>>),
    /// A reused program; opening its ring buffer by program id needs `CAP_SYS_ADMIN`.
    ProgramId(u32),
}

/// The attached programs and the maps user space reads.
pub struct Probes {
    /// Owns unpinned programs and links: dropping it detaches them.
    _ebpf: Option<Ebpf>,
    /// The cold-path log records of the eBPF side (aya-log), when they can be read.
    pub logs: LogSource,
    /// The per-CPU records; taken by the sampler, see [`Probes::take_cpu_map`].
    cpu: Option<PerCpuArray<MapData, CpuRecord>>,
    /// The counter ledger; only a daemon that attached or reused its own pins writes it.
    pub ledger: Option<Array<MapData, Ledger>>,
    pub meta: Meta,
    pub hooks: HookReport,
    pub pin_dir: Option<PathBuf>,
    pub ct_layout: Option<CtLayout>,
    /// CPUs the loader told the programs are driven by context tracking.
    pub ct_cpus: CpuSet,
    /// What the start repaired in the pin dir (missing or mismatched pins), if anything.
    pub repaired: Option<String>,
}

impl Probes {
    /// The per-CPU record map, for the sampler. `None` once taken.
    pub fn take_cpu_map(&mut self) -> Option<PerCpuArray<MapData, CpuRecord>> {
        self.cpu.take()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::printed_once;

    #[test]
    fn map_errors_name_the_map_what_failed_and_the_fix() {
        let dir = Path::new("/sys/fs/bpf/ctx");
        let source = || MapError::InvalidValueSize {
            size: 72,
            expected: 8,
        };
        let pinned = map_err("CTX_META", MapStep::Type, Some(dir))(source());
        let shown = printed_once(pinned);
        assert!(
            shown.contains("CTX_META")
                && shown.contains("--detach --pin-dir /sys/fs/bpf/ctx")
                && shown.contains("invalid value size 72"),
            "{shown}"
        );
        let own = map_err("CTX_CPU", MapStep::Type, None)(source());
        let shown = printed_once(own);
        assert!(
            shown.contains("CTX_CPU") && shown.contains("rebuild"),
            "{shown}"
        );
        let read = map_err("CTX_CONFIG", MapStep::Read, None)(MapError::KeyNotFound);
        let shown = printed_once(read);
        assert!(
            shown.contains("reading map CTX_CONFIG") && shown.contains("restart"),
            "{shown}"
        );
        for e in [
            LoadError::NoObject,
            LoadError::MissingMap { map: "CTX_CPU" },
            LoadError::Capabilities {
                missing: "CAP_BPF".into(),
            },
            LoadError::IncompatiblePins {
                dir: dir.to_owned(),
                found: 9,
            },
            LoadError::Baseline {
                source: AttachError::MissingProgram {
                    program: "ctx_empty",
                },
            },
        ] {
            printed_once(e);
        }
    }
}
