//! Keeping the pins whole while the daemon runs.
//!
//! The daemon holds a descriptor of every map and link it pinned. Every few seconds it stats
//! the pins (cheap: no bpf(2) call unless something changed). A pin that is gone is pinned
//! again from the descriptor; a pin replaced by another object is removed and ours pinned in
//! its place. That only re-creates names in bpffs: nothing is attached or detached, so the
//! kernel is never text-patched at run time. Each repair logs one WARN and counts in
//! `ctx_pins_repairs_total`; `ctx_pins_ok` and `/healthz` say when pins are broken and could
//! not be repaired.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aya::maps::MapData;
use aya::programs::links::{FdLink, PinnedLink};
use ctx_common::programs::{HOOKS, MAPS};
use tracing::warn;

use crate::host::system;
use crate::probes::pins::{link_path, map_path};

/// How often the pins are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What scrapes and `/healthz` see of the pins. Repairs are counted here and persisted by the
/// sampler with its other counters.
#[derive(Debug)]
pub struct PinHealth {
    ok: AtomicBool,
    repairs: AtomicU64,
    repaired_unix_ns: AtomicU64,
    /// Why the pins are not ok, for `/healthz`.
    problem: std::sync::Mutex<String>,
}

impl Default for PinHealth {
    fn default() -> Self {
        Self {
            ok: AtomicBool::new(true),
            repairs: AtomicU64::new(0),
            repaired_unix_ns: AtomicU64::new(0),
            problem: std::sync::Mutex::new(String::new()),
        }
    }
}

impl PinHealth {
    pub fn ok(&self) -> bool {
        self.ok.load(Ordering::Acquire)
    }

    /// Why the pins are broken, when they are.
    pub fn problem(&self) -> Option<String> {
        if self.ok() {
            return None;
        }
        Some(
            self.problem
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }

    pub fn repairs(&self) -> u64 {
        self.repairs.load(Ordering::Acquire)
    }

    pub fn repaired_unix_ns(&self) -> u64 {
        self.repaired_unix_ns.load(Ordering::Acquire)
    }

    /// Continues the counts read back from the ledger.
    pub fn seed(&self, repairs: u64, repaired_unix_ns: u64) {
        self.repairs.fetch_max(repairs, Ordering::AcqRel);
        self.repaired_unix_ns
            .fetch_max(repaired_unix_ns, Ordering::AcqRel);
    }

    pub fn note_repair(&self) {
        self.repaired_unix_ns
            .store(system::realtime_now_ns(), Ordering::Release);
        self.repairs.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn set(&self, problem: Option<String>) {
        let mut g = self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.ok.store(problem.is_none(), Ordering::Release);
        *g = problem.unwrap_or_default();
    }
}

enum Held {
    Map(MapData),
    /// A raw descriptor: aya's `FdLink::pin` consumes the link, and a failed pin would then
    /// close the last reference and detach the program.
    Link(OwnedFd),
}

struct Pin {
    path: PathBuf,
    held: Held,
    /// The kernel object's id, to tell a pin replaced by another object from ours.
    id: u32,
    /// The bpffs inode of the pin as last seen: a new inode means it was pinned anew.
    ino: u64,
}

/// The daemon's own descriptors of its pins, and the check that keeps them pinned.
pub struct PinWatch {
    dir: PathBuf,
    pins: Vec<Pin>,
    pub health: std::sync::Arc<PinHealth>,
}

fn ino(p: &Path) -> io::Result<u64> {
    std::fs::symlink_metadata(p).map(|m| m.ino())
}

fn map_id(path: &Path) -> Option<u32> {
    MapData::from_pin(path).ok()?.info().ok().map(|i| i.id())
}

fn link_id(path: &Path) -> Option<u32> {
    FdLink::from(PinnedLink::from_pin(path).ok()?)
        .info()
        .ok()
        .map(|i| i.id())
}

impl PinWatch {
    /// Opens every map pin and the links of the attached hooks, and keeps them open. Pins that
    /// cannot be opened are left out with a warning (they are reported by `/healthz`).
    pub fn hold<'a>(
        dir: &Path,
        attached: impl Iterator<Item = &'a str>,
        health: std::sync::Arc<PinHealth>,
    ) -> Self {
        let mut pins = Vec::new();
        for m in MAPS {
            let path = map_path(dir, m);
            let held = MapData::from_pin(&path).and_then(|d| d.info().map(|i| (i.id(), d)));
            match (held, ino(&path)) {
                (Ok((id, d)), Ok(ino)) => pins.push(Pin {
                    path,
                    held: Held::Map(d),
                    id,
                    ino,
                }),
                (Err(e), _) => {
                    warn!(
                        pin = %path.display(),
                        "cannot hold pinned map ({e}); it will not be repaired while running"
                    );
                }
                (_, Err(e)) => {
                    warn!(
                        pin = %path.display(),
                        "cannot stat pinned map ({e}); it will not be repaired while running"
                    );
                }
            }
        }
        for tp in attached {
            let path = link_path(dir, tp);
            let held = bpf_obj_get(&path)
                .map_err(|e| e.to_string())
                .and_then(|fd| {
                    link_id(&path)
                        .map(|id| (id, fd))
                        .ok_or_else(|| "not a link".into())
                });
            match (held, ino(&path)) {
                (Ok((id, fd)), Ok(ino)) => pins.push(Pin {
                    path,
                    held: Held::Link(fd),
                    id,
                    ino,
                }),
                (Err(e), _) => {
                    warn!(
                        pin = %path.display(),
                        "cannot hold pinned link ({e}); it will not be repaired while running"
                    );
                }
                (_, Err(e)) => {
                    warn!(
                        pin = %path.display(),
                        "cannot stat pinned link ({e}); it will not be repaired while running"
                    );
                }
            }
        }
        Self {
            dir: dir.to_owned(),
            pins,
            health,
        }
    }

    /// The pins held, for tests and the log.
    pub fn held(&self) -> usize {
        self.pins.len()
    }

    /// One look at every pin; re-pins what is gone or replaced. Returns the pins repaired.
    pub fn check(&mut self) -> Vec<PathBuf> {
        let mut repaired = Vec::new();
        let mut problems = Vec::new();
        for pin in &mut self.pins {
            let replaced = match ino(&pin.path) {
                Ok(i) if i == pin.ino => continue,
                Ok(i) => {
                    // Pinned anew: ours again (same id) needs nothing but the new inode.
                    let id = match pin.held {
                        Held::Map(_) => map_id(&pin.path),
                        Held::Link(_) => link_id(&pin.path),
                    };
                    if id == Some(pin.id) {
                        pin.ino = i;
                        continue;
                    }
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    problems.push(format!("cannot see {} ({e})", pin.path.display()));
                    continue;
                }
            };
            match repin(pin, replaced) {
                Ok(()) => repaired.push(pin.path.clone()),
                Err(e) => problems.push(format!(
                    "{} {} and pinning it again failed ({e}); restart ctx-daemon to attach \
                     cleanly",
                    pin.path.display(),
                    if replaced { "was replaced" } else { "is gone" }
                )),
            }
        }
        if !repaired.is_empty() {
            self.health.note_repair();
            let pins: Vec<String> = repaired
                .iter()
                .map(|p| p.strip_prefix(&self.dir).unwrap_or(p).display().to_string())
                .collect();
            warn!(
                dir = %self.dir.display(),
                pins = %pins.join(", "),
                "pins removed or replaced while running; pinned again from the daemon's own \
                 descriptors (nothing re-attached)"
            );
        }
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        // Once per breakage, not every check: /healthz and ctx_pins_ok say it meanwhile.
        if let Some(p) = &problem
            && self.health.ok()
        {
            warn!(dir = %self.dir.display(), "pins broken: {p}");
        }
        self.health.set(problem);
        repaired
    }
}

fn repin(pin: &mut Pin, replaced: bool) -> Result<(), String> {
    if replaced {
        std::fs::remove_file(&pin.path).map_err(|e| format!("removing the stranger: {e}"))?;
    }
    if let Some(parent) = pin.path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    match &mut pin.held {
        Held::Map(m) => m.pin(&pin.path).map_err(|e| e.to_string())?,
        Held::Link(fd) => bpf_obj_pin(fd, &pin.path).map_err(|e| e.to_string())?,
    }
    pin.ino = ino(&pin.path).map_err(|e| e.to_string())?;
    Ok(())
}

/// `bpf(BPF_OBJ_*)`'s attribute for pinning and opening pins.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: [u32; 3],
}

#[expect(clippy::cast_possible_truncation, reason = "a 32-byte struct")]
const ATTR_SIZE: libc::c_uint = size_of::<ObjAttr>() as libc::c_uint;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

fn bpf_obj(cmd: libc::c_long, path: &Path, fd: u32) -> io::Result<libc::c_long> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd,
        ..ObjAttr::default()
    };
    // SAFETY: the attribute and the path it points to outlive the call; the kernel reads
    // size_of::<ObjAttr>() bytes of it.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, &raw const attr, ATTR_SIZE) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    let fd = bpf_obj(BPF_OBJ_GET, path, 0)?;
    let fd = i32::try_from(fd).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bpf_obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let raw = u32::try_from(fd.as_raw_fd())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    bpf_obj(BPF_OBJ_PIN, path, raw).map(|_| ())
}

/// The attached hooks' tracepoints, from the meta's bitmask.
pub fn attached_tracepoints(mask: u32) -> impl Iterator<Item = &'static str> {
    HOOKS
        .iter()
        .enumerate()
        .filter(move |(i, _)| mask & (1 << i) != 0)
        .map(|(_, h)| h.tracepoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_continue_the_ledger_and_only_go_up() {
        let h = PinHealth::default();
        assert!(h.ok() && h.problem().is_none());
        h.seed(5, 1_000);
        h.seed(3, 10);
        assert_eq!((h.repairs(), h.repaired_unix_ns()), (5, 1_000));
        h.note_repair();
        assert_eq!(h.repairs(), 6);
        assert!(h.repaired_unix_ns() > 1_000);
        h.set(Some("maps/CTX_CPU is gone".into()));
        assert!(!h.ok());
        assert_eq!(h.problem().as_deref(), Some("maps/CTX_CPU is gone"));
    }

    #[test]
    fn a_watch_over_nothing_finds_nothing() {
        let dir = std::env::temp_dir().join(format!("ctx-pinwatch-{}", std::process::id()));
        let mut w = PinWatch::hold(&dir, std::iter::empty(), std::sync::Arc::default());
        assert_eq!(w.held(), 0);
        assert!(w.check().is_empty());
        assert!(w.health.ok());
    }
}
