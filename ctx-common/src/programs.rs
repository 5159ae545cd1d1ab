//! What the eBPF object holds, as user space finds it: its maps by name, and its programs with
//! the tracepoint each one attaches to.
//!
//! The programs themselves live in `ctx-ebpf`, whose `#[map]` statics and program functions
//! carry these very names (the attribute macros take literals, so the names are written there
//! once more; loading fails on any mismatch). Keeping the table here, beside the record the
//! programs write, puts everything a new hook needs on the kernel side of the line: its
//! program, the data it writes, and its row below. The row's index is its bit in
//! [`Meta::hooks_attached`](crate::Meta), which outlives the process in the pinned maps.

/// The per-CPU records ([`CpuRecord`](crate::CpuRecord)), one per CPU at key 0.
pub const MAP_CPU: &str = "CTX_CPU";
/// Which CPUs context tracking drives ([`Config`](crate::Config)).
pub const MAP_CONFIG: &str = "CTX_CONFIG";
/// Who attached the programs, and which hooks ([`Meta`](crate::Meta)).
pub const MAP_META: &str = "CTX_META";
/// User-space counters kept across restarts ([`Ledger`](crate::Ledger)).
pub const MAP_LEDGER: &str = "CTX_LEDGER";
/// aya-log's ring buffer (the hotplug program's one cold-path log line).
pub const MAP_LOGS: &str = "AYA_LOGS";
/// The mode each thread left a syscall-driven CPU in, for the context-switch program.
pub const MAP_TASK_MODE: &str = "TASK_MODE";

/// Every map of the object: a daemon pins them all, so that a restart reuses them.
pub const MAPS: [&str; 6] = [
    MAP_CPU,
    MAP_CONFIG,
    MAP_META,
    MAP_LEDGER,
    MAP_LOGS,
    MAP_TASK_MODE,
];

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

const fn raw(
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
/// the syscall fallback starts. The index is the bit in `Meta::hooks_attached`: append, never
/// reorder.
pub const HOOKS: [HookSpec; 15] = [
    raw(
        "context_tracking",
        "user_enter",
        "ctx_user_enter",
        Role::ContextTracking,
    ),
    raw(
        "context_tracking",
        "user_exit",
        "ctx_user_exit",
        Role::ContextTracking,
    ),
    raw("raw_syscalls", "sys_enter", "ctx_sys_enter", Role::Syscalls),
    raw("raw_syscalls", "sys_exit", "ctx_sys_exit", Role::Syscalls),
    raw("power", "cpu_idle", "ctx_cpu_idle", Role::Idle),
    raw("nmi", "nmi_handler", "ctx_nmi_handler", Role::Nmi),
    raw(
        "irq_vectors",
        "reschedule_entry",
        "ctx_reschedule",
        Role::Interrupts,
    ),
    raw(
        "irq_vectors",
        "call_function_entry",
        "ctx_call_function",
        Role::Interrupts,
    ),
    raw(
        "irq_vectors",
        "call_function_single_entry",
        "ctx_call_function_single",
        Role::Interrupts,
    ),
    raw(
        "irq_vectors",
        "irq_work_entry",
        "ctx_irq_work",
        Role::Interrupts,
    ),
    raw(
        "irq_vectors",
        "local_timer_entry",
        "ctx_local_timer",
        Role::Interrupts,
    ),
    raw(
        "irq",
        "irq_handler_entry",
        "ctx_device_irq",
        Role::Interrupts,
    ),
    raw(
        "exceptions",
        "page_fault_user",
        "ctx_page_fault_user",
        Role::Faults,
    ),
    raw("cpuhp", "cpuhp_enter", "ctx_cpuhp_enter", Role::Hotplug),
    HookSpec {
        kind: Kind::BtfTracepoint,
        ..raw("sched", "sched_switch", "ctx_sched_switch", Role::Switches)
    },
];

/// Hooks ctx looks for and reports but does not attach. `rcu:rcu_dyntick` (renamed
/// `rcu:rcu_watching` in 6.12) exists only with `CONFIG_RCU_TRACE`; context tracking already
/// reports the transitions it would, so it is never required.
pub const DETECTED_ONLY: [(&str, &str); 2] = [("rcu", "rcu_dyntick"), ("rcu", "rcu_watching")];

/// The hook's row in [`HOOKS`] (its bit in `Meta::hooks_attached`).
pub fn index_of(tracepoint: &str) -> Option<usize> {
    HOOKS.iter().position(|h| h.tracepoint.eq(tracepoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_table_fits_the_meta_bitmask_and_has_no_duplicates() {
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
    fn every_map_is_pinned_once() {
        for (i, m) in MAPS.iter().enumerate() {
            assert!(!MAPS[..i].contains(m), "{m} twice");
        }
    }
}
