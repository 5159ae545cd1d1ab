//! Pinned maps and links checked against this build before a daemon reuses them.
//!
//! A pin dir can hold what another build left (another layout), what a loader that died half
//! way left (a `CTX_META` never written), or a pin someone replaced. Reusing any of those
//! serves frozen or wrong data, so each pinned map's type, key and value sizes and entries are
//! compared with what the embedded object declares (aya's own check would only fail the
//! load), and each pinned link must run this build's program for its hook, writing the very
//! maps that are pinned. Anything else is repaired by a clean re-attach; the ledger is kept
//! whenever its own shape still fits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aya::maps::{Array, Map, MapData, MapInfo};
use aya::programs::links::{FdLink, PinnedLink};
use aya_obj::generated::bpf_prog_type;
use ctx_common::programs::{HOOKS, HookSpec, Kind, MAP_LEDGER, MAP_META, MAPS};
use ctx_common::record::{ABI_VERSION, META_MAGIC, Meta};
use tracing::{debug, warn};

use crate::probes::pins::{self, link_path, map_path, pin_present};
use crate::probes::{LoadError, MapStep, map_err};

/// What a map is, as `BPF_OBJ_GET_INFO_BY_FD` and the object's map section both tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl Shape {
    fn of(info: &MapInfo) -> Self {
        Self {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        }
    }

    /// The first field that differs from `want`, with both values.
    pub fn differs(&self, want: &Self) -> Option<(&'static str, u32, u32)> {
        [
            ("type", self.map_type, want.map_type),
            ("key size", self.key_size, want.key_size),
            ("value size", self.value_size, want.value_size),
            ("max_entries", self.max_entries, want.max_entries),
        ]
        .into_iter()
        .find(|(_, found, want)| found != want)
    }
}

/// One way a pin does not fit this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `maps/<NAME>` or `links/<tracepoint>`.
    pub pin: String,
    pub field: &'static str,
    pub found: String,
    pub expected: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} is {}, this build expects {}",
            self.pin, self.field, self.found, self.expected
        )
    }
}

/// The shape of every pinned map as this build creates it: the object's declarations, with
/// the ledger sized by the loader.
pub fn declared(
    object: &[u8],
    ledger_entries: u32,
) -> Result<BTreeMap<&'static str, Shape>, LoadError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| LoadError::PinDir {
        dir: "(embedded object)".into(),
        reason: format!("cannot parse this build's eBPF object ({e}): rebuild ctx"),
    })?;
    let mut out = BTreeMap::new();
    for name in MAPS {
        let Some(m) = obj.maps.get(name) else {
            return Err(LoadError::MissingMap { map: name });
        };
        let max_entries = if name == MAP_LEDGER {
            ledger_entries
        } else {
            m.max_entries()
        };
        out.insert(
            name,
            Shape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries,
            },
        );
    }
    Ok(out)
}

/// The kernel's names are cut to 15 bytes (`BPF_OBJ_NAME_LEN`).
fn kernel_name(name: &str) -> &str {
    name.get(..15).unwrap_or(name)
}

fn prog_type_of(kind: Kind) -> bpf_prog_type {
    match kind {
        Kind::RawTracepoint => bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT,
        Kind::BtfTracepoint => bpf_prog_type::BPF_PROG_TYPE_TRACING,
    }
}

/// Compares every pin in `dir` with this build.
pub fn mismatches(
    dir: &Path,
    want: &BTreeMap<&'static str, Shape>,
) -> Result<Vec<Mismatch>, LoadError> {
    let mut out = Vec::new();
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    let recorded = recorded_map_ids(dir);
    for (name, shape) in want {
        let path = map_path(dir, name);
        if !pin_present(dir, &path)? {
            continue;
        }
        let pin = format!("maps/{name}");
        let info = MapData::from_pin(&path).and_then(|m| m.info());
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                out.push(Mismatch {
                    pin,
                    field: "pin",
                    found: format!("not a map ({e})"),
                    expected: "a map".into(),
                });
                continue;
            }
        };
        let was = recorded.get(name).copied().unwrap_or(0);
        if let Some((field, found, expected)) = Shape::of(&info).differs(shape) {
            out.push(Mismatch {
                pin,
                field,
                found: found.to_string(),
                expected: expected.to_string(),
            });
        } else if was != 0 && was != info.id() {
            out.push(Mismatch {
                pin,
                field: "id",
                found: format!("{} (another map of the same shape)", info.id()),
                expected: format!("{was}, the map the programs were attached with"),
            });
        } else {
            // Only maps that fit are cross-checked with the links: one mismatch, one line.
            ids.insert(name, info.id());
            if *name == MAP_META {
                out.extend(meta_mismatch(dir)?);
            }
        }
    }
    for h in &HOOKS {
        let path = link_path(dir, h.tracepoint);
        if pin_present(dir, &path)? {
            out.extend(link_mismatch(&path, h, &ids));
        }
    }
    Ok(out)
}

/// The pinned maps whose ids the meta records, in order: every map but the meta itself.
fn recorded_maps() -> impl Iterator<Item = (usize, &'static str)> {
    MAPS.iter().copied().filter(|m| *m != MAP_META).enumerate()
}

/// The ids recorded by the last start (none when the meta is unreadable or predates them).
fn recorded_map_ids(dir: &Path) -> BTreeMap<&'static str, u32> {
    let Ok(meta) = pins::pinned_meta(dir) else {
        return BTreeMap::new();
    };
    recorded_maps()
        .filter_map(|(i, m)| {
            let word = meta.reserved.get(i / 2)?;
            let id = u32::try_from((word >> (32 * (i % 2))) & 0xffff_ffff).ok()?;
            (id != 0).then_some((m, id))
        })
        .collect()
}

/// After a load, when the pins are this build's by construction: records the pinned maps'
/// ids in the meta, for the next start's check. Needs no privilege beyond opening the pins,
/// unlike asking each program which maps it uses (`CAP_SYS_ADMIN`).
pub(crate) fn record_map_ids(dir: &Path) -> Result<(), LoadError> {
    let md = MapData::from_pin(map_path(dir, MAP_META)).map_err(map_err(
        MAP_META,
        MapStep::Open,
        Some(dir),
    ))?;
    let mut arr: Array<MapData, Meta> =
        Array::try_from(Map::Array(md)).map_err(map_err(MAP_META, MapStep::Type, Some(dir)))?;
    let mut meta = arr
        .get(&0, 0)
        .map_err(map_err(MAP_META, MapStep::Read, Some(dir)))?;
    let mut words = [0u64; 3];
    for (i, m) in recorded_maps() {
        let id = MapData::from_pin(map_path(dir, m))
            .and_then(|d| d.info())
            .map_or(0, |info| info.id());
        if let Some(w) = words.get_mut(i / 2) {
            *w |= u64::from(id) << (32 * (i % 2));
        }
    }
    if meta.reserved[..3] == words {
        return Ok(());
    }
    meta.reserved[..3].copy_from_slice(&words);
    arr.set(0, &meta, 0)
        .map_err(map_err(MAP_META, MapStep::Write, Some(dir)))
}

/// A meta that was created but never written (magic 0: a loader died half way) is not
/// reusable either: nothing says which programs wrote the maps.
fn meta_mismatch(dir: &Path) -> Result<Option<Mismatch>, LoadError> {
    let meta: Meta = pins::pinned_meta(dir)?;
    let m = |field, found: String, expected: String| Mismatch {
        pin: format!("maps/{MAP_META}"),
        field,
        found,
        expected,
    };
    Ok(if meta.magic != META_MAGIC {
        Some(m(
            "magic",
            format!("{:#x}", meta.magic),
            format!("{META_MAGIC:#x}"),
        ))
    } else if meta.abi != ABI_VERSION {
        Some(m(
            "abi",
            format!("{:#x}", meta.abi),
            format!("{ABI_VERSION:#x}"),
        ))
    } else {
        None
    })
}

/// A pinned link must run this build's program for the hook (name and type), and that
/// program must use the pinned maps, not orphans of an earlier attach.
fn link_mismatch(path: &Path, h: &HookSpec, map_ids: &BTreeMap<&str, u32>) -> Option<Mismatch> {
    let pin = format!("links/{}", h.tracepoint);
    let m = |field, found: String, expected: String| Mismatch {
        pin: pin.clone(),
        field,
        found,
        expected,
    };
    let prog_id = match PinnedLink::from_pin(path).map(FdLink::from) {
        Ok(l) => match l.info() {
            Ok(i) => i.program_id(),
            Err(e) => return Some(m("pin", format!("unreadable ({e})"), "a link".into())),
        },
        Err(e) => return Some(m("pin", format!("not a link ({e})"), "a link".into())),
    };
    // Finding a program by id takes CAP_SYS_ADMIN; a daemon starts as root. Without it the
    // maps' shapes were still checked.
    let prog = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id);
    let Some(prog) = prog else {
        debug!(
            pin,
            "program of the link not readable; its maps are not cross-checked"
        );
        return None;
    };
    let want_name = kernel_name(h.program);
    if let Some(name) = prog.name_as_str()
        && name != want_name
    {
        return Some(m("program", name.into(), want_name.into()));
    }
    let want_type = prog_type_of(h.kind);
    if prog.program_type() != want_type {
        return Some(m(
            "program type",
            format!("{:?}", prog.program_type()),
            format!("{want_type:?}"),
        ));
    }
    let Ok(Some(used)) = prog.map_ids() else {
        return None;
    };
    for id in used {
        let Ok(info) = MapInfo::from_id(id) else {
            continue;
        };
        let Some(name) = info.name_as_str() else {
            continue;
        };
        let pinned = MAPS
            .iter()
            .find(|n| kernel_name(n) == name)
            .and_then(|n| map_ids.get(n));
        if let Some(pinned) = pinned
            && *pinned != id
        {
            return Some(m(
                "map",
                format!("{name} id {id}"),
                format!("the pinned {name} (id {pinned})"),
            ));
        }
    }
    None
}

/// Before a daemon loads: repairs a partial set of pins, then anything that does not fit this
/// build, by removing the pins so the load attaches cleanly. Keeps the ledger where its shape
/// fits. Returns what was repaired, for the log and `ctx_pins_repairs_total`.
pub(crate) fn reconcile(
    dir: &Path,
    object: &[u8],
    ledger_entries: u32,
) -> Result<Option<String>, LoadError> {
    if let Some(what) = pins::repair_partial(dir)? {
        return Ok(Some(what));
    }
    let want = declared(object, ledger_entries)?;
    let found = mismatches(dir, &want)?;
    // Only the ledger holds what user space counted; gone while no daemon ran, it cannot be
    // rebuilt. Say so rather than restart those counters silently.
    let ledger_gone = pin_present(dir, &map_path(dir, MAP_META))?
        && !pin_present(dir, &map_path(dir, MAP_LEDGER))?;
    if ledger_gone {
        warn!(
            dir = %dir.display(),
            "the counter ledger pin maps/{MAP_LEDGER} is missing: a new one is created, and \
             counters only user space keeps (sweeps, verdicts) start again from 0"
        );
    }
    if found.is_empty() {
        return Ok(ledger_gone.then(|| format!("maps/{MAP_LEDGER} missing")));
    }
    for m in &found {
        warn!(
            pin = m.pin,
            field = m.field,
            found = m.found,
            expected = m.expected,
            "pin does not match this build; attaching cleanly"
        );
    }
    let ledger_pin = format!("maps/{MAP_LEDGER}");
    let ledger_too = found.iter().any(|m| m.pin == ledger_pin);
    if ledger_too {
        warn!(
            "the counter ledger does not fit this build: it is recreated, so counters only user \
             space keeps start again from 0"
        );
    }
    pins::remove_for_reattach(dir, ledger_too)?;
    Ok(Some(
        found
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_differing_field_is_named() {
        let want = Shape {
            map_type: 6,
            key_size: 4,
            value_size: 448,
            max_entries: 1,
        };
        assert_eq!(want.differs(&want), None);
        let got = Shape {
            value_size: 384,
            max_entries: 2,
            ..want
        };
        assert_eq!(got.differs(&want), Some(("value size", 384, 448)));
        let shown = Mismatch {
            pin: "maps/CTX_CPU".into(),
            field: "value size",
            found: "384".into(),
            expected: "448".into(),
        }
        .to_string();
        assert!(
            shown.contains("maps/CTX_CPU") && shown.contains("value size"),
            "{shown}"
        );
    }

    #[test]
    fn kernel_names_are_cut_to_15_bytes() {
        assert_eq!(kernel_name("ctx_call_function_single"), "ctx_call_functi");
        assert_eq!(kernel_name("CTX_CPU"), "CTX_CPU");
    }
}
