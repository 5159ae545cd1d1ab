//! ctx's eBPF programs.
//!
//! Each program is a raw tracepoint (about 60 ns per event cheaper than a classic tracepoint,
//! measured on the development host) and does one thing: apply its event to the current CPU's
//! [`CpuRecord`] with the shared writer code of `ctx-common`. Nothing here logs or writes to a
//! ring buffer: a ring-buffer wakeup is an irq_work self-IPI on the very CPU being watched.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuArray},
    programs::RawTracePointContext,
};
use ctx_common::{
    record::{Config, CpuRecord, IrqKind, Ledger, MAX_CPUS, Meta},
    writer::{MainEvent, irq_arrived, main_event, nmi_handler_ran},
};

/// One record per CPU, at key 0.
#[map]
static CTX_CPU: PerCpuArray<CpuRecord> = PerCpuArray::with_max_entries(1, 0);

/// Which CPUs context tracking drives; written by the loader once its hooks are attached.
#[map]
static CTX_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Written and read by user space only; declared here so it is created and pinned with the
/// rest.
#[map]
static CTX_META: Array<Meta> = Array::with_max_entries(1, 0);

/// User-space counters kept across daemon restarts, one entry per CPU (resized at load).
#[map]
static CTX_LEDGER: Array<Ledger> = Array::with_max_entries(1, 0);

/// `power:cpu_idle` passes this state on idle exit.
const PWR_EVENT_EXIT: u32 = u32::MAX;

#[inline(always)]
fn record() -> Option<*mut CpuRecord> {
    CTX_CPU.get_ptr_mut(0)
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Only the syscall programs need this; the lookup is an inlined array access.
#[inline(always)]
fn ct_cpu() -> bool {
    // The mask changes no CPU id (MAX_CPUS is a power of two, at least NR_CPUS) but bounds the
    // very register the word index is derived from. Without it LLVM bounds-checks a
    // zero-extended copy and indexes with the unbounded original, and the verifier rejects the
    // program ("R0 max value is outside of the allowed memory range", seen on 6.1).
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } as usize & (MAX_CPUS - 1);
    match CTX_CONFIG.get(0) {
        Some(cfg) => match cfg.ct_cpus.get(cpu / 64) {
            Some(w) => *w >> (cpu % 64) & 1 == 1,
            None => false,
        },
        None => false,
    }
}

#[inline(always)]
fn main_ev(ev: MainEvent, ct_cpu: bool) -> u32 {
    if let Some(r) = record() {
        // SAFETY: `r` is this CPU's record and every caller runs in main context (see the
        // hook list in ctx-common's record module).
        unsafe { main_event(&raw mut (*r).main, now(), ev, ct_cpu) };
    }
    0
}

#[inline(always)]
fn irq(kind: IrqKind) -> u32 {
    if let Some(r) = record() {
        // SAFETY: hard-IRQ context on this CPU.
        unsafe { irq_arrived(&raw mut (*r).irq, &raw const (*r).main, now(), kind) };
    }
    0
}

// Context tracking: fires on CPUs where it is active (nohz_full), on every user/kernel
// transition, with IRQs off.

#[raw_tracepoint(tracepoint = "user_enter")]
pub fn ctx_user_enter(_ctx: RawTracePointContext) -> u32 {
    main_ev(MainEvent::UserEnter, false)
}

#[raw_tracepoint(tracepoint = "user_exit")]
pub fn ctx_user_exit(_ctx: RawTracePointContext) -> u32 {
    main_ev(MainEvent::UserExit, false)
}

// Syscall boundaries: the fallback where context tracking is inactive.

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn ctx_sys_enter(_ctx: RawTracePointContext) -> u32 {
    main_ev(MainEvent::SysEnter, ct_cpu())
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn ctx_sys_exit(_ctx: RawTracePointContext) -> u32 {
    main_ev(MainEvent::SysExit, ct_cpu())
}

/// `power:cpu_idle(state, cpu_id)`, always on the CPU it describes.
#[raw_tracepoint(tracepoint = "cpu_idle")]
pub fn ctx_cpu_idle(ctx: RawTracePointContext) -> u32 {
    let state: u64 = ctx.arg(0);
    if state as u32 == PWR_EVENT_EXIT {
        main_ev(MainEvent::IdleExit, false)
    } else {
        main_ev(MainEvent::IdleEnter, false)
    }
}

/// `exceptions:page_fault_user`: counts faults, and claims the user exit that entered for it.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn ctx_page_fault_user(_ctx: RawTracePointContext) -> u32 {
    main_ev(MainEvent::Fault, false)
}

/// `cpuhp:cpuhp_enter(cpu, target, idx, fun)`: hotplug steps; only those running on the CPU
/// being taken down or brought up matter. Teardown walks states down (target < idx).
#[raw_tracepoint(tracepoint = "cpuhp_enter")]
pub fn ctx_cpuhp_enter(ctx: RawTracePointContext) -> u32 {
    let cpu: u64 = ctx.arg(0);
    let target: u64 = ctx.arg(1);
    let idx: u64 = ctx.arg(2);
    // SAFETY: helper without preconditions.
    if cpu as u32 != unsafe { bpf_get_smp_processor_id() } {
        return 0;
    }
    if (target as i32) < (idx as i32) {
        main_ev(MainEvent::CpuDown, false)
    } else {
        main_ev(MainEvent::CpuUp, false)
    }
}

/// `nmi:nmi_handler(handler, delta_ns, handled)`: after each NMI handler ran (x86).
#[raw_tracepoint(tracepoint = "nmi_handler")]
pub fn ctx_nmi_handler(ctx: RawTracePointContext) -> u32 {
    let handler: u64 = ctx.arg(0);
    let delta: u64 = ctx.arg(1);
    if let Some(r) = record() {
        // SAFETY: NMI context on this CPU, the NmiPart's only writer.
        unsafe {
            nmi_handler_ran(
                &raw mut (*r).nmi,
                &raw const (*r).main,
                now(),
                handler,
                delta as i64,
            )
        };
    }
    0
}

// Interrupts, by x86 vector. Each counts by the state the CPU was in when it arrived.

#[raw_tracepoint(tracepoint = "reschedule_entry")]
pub fn ctx_reschedule(_ctx: RawTracePointContext) -> u32 {
    irq(IrqKind::Reschedule)
}

#[raw_tracepoint(tracepoint = "call_function_entry")]
pub fn ctx_call_function(_ctx: RawTracePointContext) -> u32 {
    irq(IrqKind::CallFunction)
}

#[raw_tracepoint(tracepoint = "call_function_single_entry")]
pub fn ctx_call_function_single(_ctx: RawTracePointContext) -> u32 {
    irq(IrqKind::CallFunctionSingle)
}

#[raw_tracepoint(tracepoint = "irq_work_entry")]
pub fn ctx_irq_work(_ctx: RawTracePointContext) -> u32 {
    irq(IrqKind::IrqWork)
}

#[raw_tracepoint(tracepoint = "local_timer_entry")]
pub fn ctx_local_timer(_ctx: RawTracePointContext) -> u32 {
    irq(IrqKind::LocalTimer)
}

/// `irq:irq_handler_entry`: device interrupts (one event per action of a shared line).
#[raw_tracepoint(tracepoint = "irq_handler_entry")]
pub fn ctx_device_irq(_ctx: RawTracePointContext) -> u32 {
    irq(IrqKind::Device)
}

/// The same programs with nothing in them, for the benchmark's "empty probe" case.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn ctx_empty_a(_ctx: RawTracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn ctx_empty_b(_ctx: RawTracePointContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; it exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
