//! What ctx learns from the kernel's BTF: which tracepoints exist (each has a
//! `btf_trace_<name>` typedef), and the layout of the kernel's own `context_tracking.state`,
//! which ctx never hard-codes because pending patches move its bits.

use std::path::Path;

use btf_rs::{Btf, Type};
use thiserror::Error;

#[derive(Debug, Error)]
#[error(
    "reading kernel BTF from {path}: {reason} (the kernel needs CONFIG_DEBUG_INFO_BTF=y; ctx still \
     runs without it, detecting hooks by attaching them)"
)]
pub struct BtfError {
    pub path: String,
    pub reason: String,
}

pub struct KernelBtf {
    btf: Btf,
}

/// Layout of the kernel's `context_tracking.state` word, derived from BTF:
///
/// ```text
///   [ RCU watching counter | context work (pending patches) | CT state ]
///    ^ watching_start        ^ work_start                    ^ bit 0
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtLayout {
    /// Byte offset of `state` in `struct context_tracking`.
    pub state_offset: u32,
    /// Width of the state field (bits from 0).
    pub state_bits: u32,
    /// `(name, value)` of the state enum, e.g. `CT_STATE_USER = 2` (`CONTEXT_USER` before 6.12).
    pub states: Vec<(String, i64)>,
    /// Bits used by context work (`CONFIG_CONTEXT_TRACKING_WORK`), 0 when absent.
    pub work_bits: u32,
    /// First bit of the RCU watching counter.
    pub watching_start: u32,
}

impl CtLayout {
    pub fn state_mask(&self) -> u32 {
        (1u32 << self.state_bits) - 1
    }

    /// Name of a state value, if the enum has it.
    pub fn state_name(&self, raw: u32) -> Option<&str> {
        let v = i64::from(raw & self.state_mask());
        self.states
            .iter()
            .find(|(_, val)| *val == v)
            .map(|(n, _)| n.as_str())
    }

    pub fn describe(&self) -> String {
        format!(
            "state bits 0-{} ({}), context work bits {}, RCU watching counter from bit {}",
            self.state_bits.saturating_sub(1),
            self.states
                .iter()
                .filter(|(_, v)| *v >= 0 && !self_is_max(*v, &self.states))
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            if self.work_bits == 0 {
                "none".to_owned()
            } else {
                format!(
                    "{}-{}",
                    self.state_bits,
                    self.state_bits + self.work_bits - 1
                )
            },
            self.watching_start
        )
    }
}

fn self_is_max(v: i64, states: &[(String, i64)]) -> bool {
    states.iter().map(|(_, x)| *x).max() == Some(v)
}

/// Smallest bit width that holds `v` (the kernel's `bits_per()`).
fn bits_per(v: i64) -> u32 {
    if v <= 0 {
        1
    } else {
        64 - v.cast_unsigned().leading_zeros()
    }
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        // One read: parsing from the file directly costs tens of thousands of small reads.
        let bytes = std::fs::read(path).map_err(|e| BtfError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let btf = Btf::from_bytes(&bytes).map_err(|e| BtfError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self { btf })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        let btf = Btf::from_bytes(bytes).map_err(|e| BtfError {
            path: "<bytes>".into(),
            reason: e.to_string(),
        })?;
        Ok(Self { btf })
    }

    fn has(&self, name: &str) -> bool {
        self.btf
            .resolve_ids_by_name(name)
            .is_ok_and(|v| !v.is_empty())
    }

    /// Every tracepoint has a `btf_trace_<name>` typedef in vmlinux BTF.
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.has(&format!("btf_trace_{name}"))
    }

    fn enum_values(&self, name: &str) -> Option<Vec<(String, i64)>> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Enum(e) => Some(
                    e.members
                        .iter()
                        .filter_map(|m| {
                            let n = self.btf.resolve_name(m).ok()?;
                            Some((n, i64::from(m.val().cast_signed())))
                        })
                        .collect(),
                ),
                _ => None,
            })
    }

    /// Value of a named enumerator of an anonymous enum.
    fn enumerator(&self, wanted: &str) -> Option<i64> {
        self.btf
            .resolve_types_by_name("")
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Enum(e) => e.members.iter().find_map(|m| {
                    (self.btf.resolve_name(m).ok()? == wanted)
                        .then(|| i64::from(m.val().cast_signed()))
                }),
                _ => None,
            })
    }

    /// Byte offset of `member` in `struct name`.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => s.members.iter().find_map(|m| {
                    (self.btf.resolve_name(m).ok()? == member).then(|| m.bit_offset() / 8)
                }),
                _ => None,
            })
    }

    /// Whether `enum name` has the enumerator `wanted`, e.g. `BPF_FUNC_task_pt_regs` in
    /// `bpf_func_id`: the kernel's own list of the helpers it has.
    pub fn enum_has(&self, name: &str, wanted: &str) -> bool {
        self.enum_values(name)
            .is_some_and(|v| v.iter().any(|(n, _)| n == wanted))
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => u32::try_from(s.size()).ok(),
                _ => None,
            })
    }

    /// Whether the kernel has a function (or any type) of this name.
    pub fn has_name(&self, name: &str) -> bool {
        self.has(name)
    }

    /// The layout of `context_tracking.state`, or `None` when the kernel has no context tracking.
    pub fn ct_layout(&self) -> Option<CtLayout> {
        let states = self.enum_values("ctx_state")?;
        let max = states
            .iter()
            .find(|(n, _)| n == "CT_STATE_MAX" || n == "CONTEXT_MAX")
            .map(|(_, v)| *v)?;
        let state_bits = bits_per(max - 1);
        let state_offset = self.member_offset("context_tracking", "state")?;
        // Context work takes CT_WORK_MAX_OFFSET bits above the state, only when built in; its
        // setter exists exactly then.
        let work_bits = if self.has("ct_set_cpu_work") {
            self.enumerator("CT_WORK_MAX_OFFSET")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        } else {
            0
        };
        Some(CtLayout {
            state_offset,
            state_bits,
            states,
            work_bits,
            watching_start: state_bits + work_bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        assert_eq!(bits_per(3), 2);
        assert_eq!(bits_per(4), 3);
        assert_eq!(bits_per(1), 1);
    }

    #[test]
    fn layout_names() {
        let l = CtLayout {
            state_offset: 8,
            state_bits: 2,
            states: vec![
                ("CT_STATE_DISABLED".into(), -1),
                ("CT_STATE_KERNEL".into(), 0),
                ("CT_STATE_IDLE".into(), 1),
                ("CT_STATE_USER".into(), 2),
                ("CT_STATE_GUEST".into(), 3),
                ("CT_STATE_MAX".into(), 4),
            ],
            work_bits: 1,
            watching_start: 3,
        };
        assert_eq!(l.state_mask(), 3);
        assert_eq!(l.state_name(0b1110), Some("CT_STATE_USER"));
        let d = l.describe();
        assert!(d.contains("CT_STATE_USER=2"), "{d}");
        assert!(d.contains("context work bits 2-2"), "{d}");
        assert!(d.contains("from bit 3"), "{d}");
    }

    #[test]
    fn a_missing_file_names_it_and_the_fix() {
        let e = KernelBtf::load(Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("no such file");
        let shown = crate::test_util::printed_once(e);
        assert!(
            shown.contains("/nonexistent/vmlinux") && shown.contains("CONFIG_DEBUG_INFO_BTF"),
            "{shown}"
        );
    }

    /// The host's own BTF, when there is one: tracepoints that exist everywhere are found.
    #[test]
    fn host_btf_when_present() {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if !p.exists() {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux on this host");
            return;
        }
        let b = KernelBtf::load(p).unwrap();
        assert!(b.has_tracepoint("sys_enter"));
        assert!(!b.has_tracepoint("no_such_tracepoint_ctx"));
        assert!(b.enum_has("bpf_func_id", "BPF_FUNC_map_lookup_elem"));
        assert!(!b.enum_has("bpf_func_id", "BPF_FUNC_no_such_helper_ctx"));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(b.struct_size("pt_regs"), Some(168));
        }
    }
}
