//! A daemon's pins under bpffs: checked before use, reused read-only by viewers, removed by
//! `--detach`.
//!
//! Layout of a pin directory: `maps/<NAME>` for every map of the object
//! (`ctx_common::programs::MAPS`) and `links/<tracepoint>` for every attached hook.

use std::path::{Path, PathBuf};
use std::{fs, io};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use ctx_common::programs::{HOOKS, MAP_CONFIG, MAP_CPU, MAP_LEDGER, MAP_META, MAPS};
use ctx_common::record::{ABI_VERSION, Config, META_MAGIC, Meta};
use tracing::{info, warn};

use crate::host::system::{self, BPF_FS_MAGIC, SysRoot};
use crate::probes::hooks::{HookReport, HookStatus};
use crate::probes::{LoadError, LogSource, MapStep, Probes, check_caps, map_err};

fn pin_err(dir: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::PinDir {
        dir: dir.to_owned(),
        reason: reason.into(),
    }
}

/// Whether a pin exists. Not `Path::exists`: that reads EACCES as "absent", and a viewer that
/// cannot see a daemon's pins (the pin dir's parent is 0700 under systemd) then attached a
/// second copy, text-patching the kernel.
pub(crate) fn pin_present(dir: &Path, pin: &Path) -> Result<bool, LoadError> {
    match fs::symlink_metadata(pin) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(pin_err(
            dir,
            format!(
                "cannot see {} ({e}): {NO_ACCESS_FIX}",
                pin.strip_prefix(dir).unwrap_or(pin).display()
            ),
        )),
    }
}

const NO_ACCESS_FIX: &str = "the pins belong to ctx-daemon; run this as root (sudo) \
     or as the ctx user, rather than attaching a second copy";

/// Refuses, with the fix, a pin this user may not open (bpf(2) `BPF_OBJ_GET` would only say
/// "Permission denied").
fn check_openable(dir: &Path, pin: &Path) -> Result<(), LoadError> {
    let Ok(c) = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()) else {
        return Ok(());
    };
    // SAFETY: a valid C string; access(2) only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::PermissionDenied {
        return Err(pin_err(
            dir,
            format!(
                "cannot open {} ({e}): {NO_ACCESS_FIX}",
                pin.strip_prefix(dir).unwrap_or(pin).display()
            ),
        ));
    }
    Ok(())
}

pub(crate) fn map_path(dir: &Path, map: &str) -> PathBuf {
    dir.join("maps").join(map)
}

pub(crate) fn link_path(dir: &Path, tracepoint: &str) -> PathBuf {
    dir.join("links").join(tracepoint)
}

/// Makes sure `dir` can hold pins: on bpffs, existing, writable. Mounts bpffs at /sys/fs/bpf
/// when that is where the pins go and nothing is mounted there (systemd normally mounts it;
/// minimal systems and containers may not).
pub fn prepare_pin_dir(dir: &Path) -> Result<(), LoadError> {
    let bpffs_root = Path::new("/sys/fs/bpf");
    if dir.starts_with(bpffs_root) && !system::fs_magic_is(bpffs_root, BPF_FS_MAGIC) {
        info!("bpffs is not mounted at /sys/fs/bpf; mounting it");
        if let Err(e) = mount_bpffs(bpffs_root) {
            return Err(pin_err(
                dir,
                format!(
                    "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({e}): run \
                     `mount -t bpf bpf /sys/fs/bpf` as root"
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

fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid C strings; mount(2) with no data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The pinned `CTX_META`, opened and read.
pub(crate) fn pinned_meta(dir: &Path) -> Result<Meta, LoadError> {
    let md = MapData::from_pin(map_path(dir, MAP_META)).map_err(map_err(
        MAP_META,
        MapStep::Open,
        Some(dir),
    ))?;
    // A CTX_META of another size is another ctx's layout: say how to clear it, not only
    // "invalid value size".
    let arr: Array<MapData, Meta> = Array::try_from(Map::Array(md)).map_err(|e| {
        pin_err(
            dir,
            format!(
                "{MAP_META} is not this build's ({e}): these pins are from another ctx; remove \
                 them with `ctx-daemon --detach --pin-dir {}`",
                dir.display()
            ),
        )
    })?;
    arr.get(&0, 0)
        .map_err(map_err(MAP_META, MapStep::Read, Some(dir)))
}

/// Refuses pins of another layout. A meta that was created but never written (a loader died
/// before finishing) is reusable.
pub(crate) fn check_pinned_meta(dir: &Path) -> Result<Option<Meta>, LoadError> {
    if !pin_present(dir, &map_path(dir, MAP_META))? {
        return Ok(None);
    }
    let meta = pinned_meta(dir)?;
    if meta.magic != 0 && (meta.magic != META_MAGIC || meta.abi != ABI_VERSION) {
        return Err(LoadError::IncompatiblePins {
            dir: dir.to_owned(),
            found: meta.abi,
        });
    }
    Ok(Some(meta))
}

/// Opens a daemon's pinned maps read-only, without loading or attaching anything. `None` when
/// nothing is pinned there.
pub fn open_pinned(dir: &Path, sys: &SysRoot) -> Result<Option<Probes>, LoadError> {
    if !pin_present(dir, &map_path(dir, MAP_META))? {
        return Ok(None);
    }
    for name in [MAP_META, MAP_CPU, MAP_CONFIG] {
        check_openable(dir, &map_path(dir, name))?;
    }
    check_caps(sys)?;
    let Some(meta) = check_pinned_meta(dir)? else {
        return Ok(None);
    };
    if meta.magic == 0 {
        return Ok(None);
    }
    let open = |name: &'static str| {
        MapData::from_pin(map_path(dir, name)).map_err(map_err(name, MapStep::Open, Some(dir)))
    };
    let cpu = PerCpuArray::try_from(Map::PerCpuArray(open(MAP_CPU)?)).map_err(map_err(
        MAP_CPU,
        MapStep::Type,
        Some(dir),
    ))?;
    let config: Array<MapData, Config> = Array::try_from(Map::Array(open(MAP_CONFIG)?))
        .map_err(map_err(MAP_CONFIG, MapStep::Type, Some(dir)))?;
    let cfg = config
        .get(&0, 0)
        .map_err(map_err(MAP_CONFIG, MapStep::Read, Some(dir)))?;
    let possible = sys.possible()?;
    let ct_cpus = possible.iter().filter(|c| cfg.ct_cpu(*c)).collect();
    let mut hooks = HookReport::default();
    for (i, h) in HOOKS.iter().enumerate() {
        let attached = meta.hooks_attached & (1 << i) != 0;
        let status = if attached && link_path(dir, h.tracepoint).exists() {
            HookStatus::Reused
        } else if attached {
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
        pin_dir: Some(dir.to_owned()),
        ct_layout: None,
        ct_cpus,
        repaired: None,
    }))
}

/// Every pin the daemon keeps in `dir`: the maps, and the links of `attached` hooks.
pub fn expected_pins<'a>(dir: &Path, attached: impl Iterator<Item = &'a str>) -> Vec<PathBuf> {
    MAPS.iter()
        .map(|m| map_path(dir, m))
        .chain(attached.map(|tp| link_path(dir, tp)))
        .collect()
}

/// Makes a partial set of pins whole before reuse. Links whose programs write a map whose pin
/// is gone would keep writing the orphaned map while a new start creates and reads a fresh
/// one: every per-CPU counter would read 0 forever. When any program-side map pin is missing
/// but other pins remain, every link and program-side map pin is removed so the start attaches
/// cleanly (the ledger stays: it is user space's, and nothing in the kernel writes it).
/// Returns what was repaired, if anything.
pub(crate) fn repair_partial(dir: &Path) -> Result<Option<String>, LoadError> {
    let mut missing = Vec::new();
    let mut present = 0;
    for m in MAPS.iter().filter(|m| **m != MAP_LEDGER) {
        if pin_present(dir, &map_path(dir, m))? {
            present += 1;
        } else {
            missing.push(*m);
        }
    }
    let links = HOOKS
        .iter()
        .map(|h| link_path(dir, h.tracepoint))
        .filter(|p| matches!(pin_present(dir, p), Ok(true)))
        .count();
    if missing.is_empty() || present + links == 0 {
        return Ok(None);
    }
    remove_for_reattach(dir, false)?;
    let what = format!(
        "pins {} missing; removed the other {present} map and {links} link pins to attach cleanly",
        missing.join(", ")
    );
    warn!(dir = %dir.display(), "{what}");
    Ok(Some(what))
}

/// Removes every link pin and every map pin but the ledger's (and the ledger's too when
/// `ledger`), so that the next load attaches cleanly.
pub(crate) fn remove_for_reattach(dir: &Path, ledger: bool) -> Result<(), LoadError> {
    let remove = |p: &Path| match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(pin_err(dir, format!("removing {}: {e}", p.display()))),
    };
    for h in &HOOKS {
        remove(&link_path(dir, h.tracepoint))?;
    }
    for m in MAPS.iter().filter(|m| ledger || **m != MAP_LEDGER) {
        remove(&map_path(dir, m))?;
    }
    Ok(())
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
    let remove = |p: &Path| {
        fs::remove_file(p).map_err(|e| pin_err(dir, format!("removing {}: {e}", p.display())))
    };
    for h in &HOOKS {
        let p = link_path(dir, h.tracepoint);
        if p.exists() {
            remove(&p)?;
            rep.links += 1;
        }
    }
    for m in MAPS {
        let p = map_path(dir, m);
        if p.exists() {
            remove(&p)?;
            rep.maps += 1;
        }
    }
    for sub in ["links", "maps", ""] {
        let _ = fs::remove_dir(dir.join(sub));
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::printed_once;

    #[test]
    fn a_pin_dir_off_bpffs_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("ctx-pins-{}", std::process::id()));
        let e = prepare_pin_dir(&dir).unwrap_err();
        let _ = fs::remove_dir_all(&dir);
        let shown = printed_once(e);
        assert!(shown.contains("under /sys/fs/bpf"), "{shown}");
    }
}
