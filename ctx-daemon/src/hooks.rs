//! The kernel hooks ctx uses, what each is for, and how each attach went.

use std::fmt;

/// What a hook contributes. Hooks of one role attach together or not at all where a role
/// needs a pair (enter without exit would corrupt the mirror).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Every user/kernel transition, on CPUs where context tracking is active.
    ContextTracking,
    /// Syscall boundaries: the fallback for CPUs without context tracking.
    Syscalls,
    Idle,
    Nmi,
    /// IPIs and other interrupts, by vector.
    Interrupts,
    Faults,
    Hotplug,
    /// Context switches: keep the syscall fallback right across preemption.
    Switches,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ContextTracking => "context_tracking",
            Self::Syscalls => "syscalls",
            Self::Idle => "idle",
            Self::Nmi => "nmi",
            Self::Interrupts => "interrupts",
            Self::Faults => "faults",
            Self::Hotplug => "hotplug",
            Self::Switches => "switches",
        }
    }

    /// Roles whose hooks only make sense as a pair.
    pub const fn paired(self) -> bool {
        matches!(self, Self::ContextTracking | Self::Syscalls)
    }
}

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `BPF_PROG_TYPE_RAW_TRACEPOINT`: untyped arguments, no BTF needed.
    RawTracepoint,
    /// `tp_btf`: typed arguments (needed to pass a task to helpers); needs kernel BTF.
    BtfTracepoint,
}

#[derive(Clone, Copy, Debug)]
pub struct HookSpec {
    /// Tracepoint name, as the raw tracepoint attach and BTF (`btf_trace_<name>`) know it.
    pub tracepoint: &'static str,
    /// Trace event group, for messages and docs (`events/<group>/<tracepoint>`).
    pub group: &'static str,
    /// Program name in the eBPF object.
    pub program: &'static str,
    pub role: Role,
    pub kind: Kind,
}

const fn hook(
    group: &'static str,
    tracepoint: &'static str,
    program: &'static str,
    role: Role,
) -> HookSpec {
    HookSpec {
        tracepoint,
        group,
        program,
        role,
        kind: Kind::RawTracepoint,
    }
}

/// In attach order: context tracking first, so the loader knows which CPUs it drives before
/// the syscall fallback starts. The index is the bit in `Meta::hooks_attached`.
pub const HOOKS: [HookSpec; 15] = [
    hook(
        "context_tracking",
        "user_enter",
        "ctx_user_enter",
        Role::ContextTracking,
    ),
    hook(
        "context_tracking",
        "user_exit",
        "ctx_user_exit",
        Role::ContextTracking,
    ),
    hook("raw_syscalls", "sys_enter", "ctx_sys_enter", Role::Syscalls),
    hook("raw_syscalls", "sys_exit", "ctx_sys_exit", Role::Syscalls),
    hook("power", "cpu_idle", "ctx_cpu_idle", Role::Idle),
    hook("nmi", "nmi_handler", "ctx_nmi_handler", Role::Nmi),
    hook(
        "irq_vectors",
        "reschedule_entry",
        "ctx_reschedule",
        Role::Interrupts,
    ),
    hook(
        "irq_vectors",
        "call_function_entry",
        "ctx_call_function",
        Role::Interrupts,
    ),
    hook(
        "irq_vectors",
        "call_function_single_entry",
        "ctx_call_function_single",
        Role::Interrupts,
    ),
    hook(
        "irq_vectors",
        "irq_work_entry",
        "ctx_irq_work",
        Role::Interrupts,
    ),
    hook(
        "irq_vectors",
        "local_timer_entry",
        "ctx_local_timer",
        Role::Interrupts,
    ),
    hook(
        "irq",
        "irq_handler_entry",
        "ctx_device_irq",
        Role::Interrupts,
    ),
    hook(
        "exceptions",
        "page_fault_user",
        "ctx_page_fault_user",
        Role::Faults,
    ),
    hook("cpuhp", "cpuhp_enter", "ctx_cpuhp_enter", Role::Hotplug),
    HookSpec {
        kind: Kind::BtfTracepoint,
        ..hook("sched", "sched_switch", "ctx_sched_switch", Role::Switches)
    },
];

/// Hooks ctx looks for and reports but does not attach. `rcu:rcu_dyntick` (renamed
/// `rcu:rcu_watching` in 6.12) exists only with CONFIG_RCU_TRACE; context tracking already
/// reports the transitions it would, so it is never required.
pub const DETECTED_ONLY: [(&str, &str); 2] = [("rcu", "rcu_dyntick"), ("rcu", "rcu_watching")];

pub fn index_of(tracepoint: &str) -> Option<usize> {
    HOOKS.iter().position(|h| h.tracepoint == tracepoint)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookStatus {
    /// Attached by this process.
    Attached,
    /// Attached earlier and pinned; reused without attaching again.
    Reused,
    /// The kernel has no such tracepoint.
    Absent,
    /// Present but attaching failed; the string says why.
    Failed(String),
    /// Not attached by choice (its pair failed, or it is detect-only).
    Skipped(&'static str),
    /// Present in the kernel; ctx reports it and does not attach it.
    Detected,
}

impl HookStatus {
    pub fn active(&self) -> bool {
        matches!(self, Self::Attached | Self::Reused)
    }

    /// Short label for metrics and tables.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Reused => "reused",
            Self::Absent => "absent",
            Self::Failed(_) => "failed",
            Self::Skipped(_) => "skipped",
            Self::Detected => "detected",
        }
    }
}

impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(why) => write!(f, "failed: {why}"),
            Self::Skipped(why) => write!(f, "skipped: {why}"),
            other => f.write_str(other.label()),
        }
    }
}

/// The outcome for every hook, in table order, plus the detect-only ones.
#[derive(Clone, Debug, Default)]
pub struct HookReport {
    pub hooks: Vec<(HookSpec, HookStatus)>,
    pub detected: Vec<(&'static str, &'static str, bool)>,
}

impl HookReport {
    pub fn status(&self, tracepoint: &str) -> Option<&HookStatus> {
        self.hooks
            .iter()
            .find(|(h, _)| h.tracepoint == tracepoint)
            .map(|(_, s)| s)
    }

    pub fn role_active(&self, role: Role) -> bool {
        let mut any = false;
        for (h, s) in &self.hooks {
            if h.role == role {
                if !s.active() && role.paired() {
                    return false;
                }
                any |= s.active();
            }
        }
        any
    }

    pub fn attached_mask(&self) -> u32 {
        self.hooks
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| s.active())
            .fold(0, |m, (i, _)| m | 1 << i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert!(HOOKS.len() <= 32, "hooks_attached is a u32 bitmask");
        for (i, h) in HOOKS.iter().enumerate() {
            assert_eq!(
                index_of(h.tracepoint),
                Some(i),
                "duplicate {}",
                h.tracepoint
            );
            assert!(h.program.starts_with("ctx_"));
        }
    }

    #[test]
    fn paired_roles_need_both() {
        let mut r = HookReport::default();
        r.hooks.push((HOOKS[0], HookStatus::Attached));
        r.hooks.push((HOOKS[1], HookStatus::Absent));
        assert!(!r.role_active(Role::ContextTracking));
        r.hooks[1].1 = HookStatus::Reused;
        assert!(r.role_active(Role::ContextTracking));
        assert_eq!(r.attached_mask(), 0b11);
    }
}
