//! The programs (compiled for bpfel-unknown-none only).

#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program attributes pass each program its context by value"
)]
#![expect(
    clippy::inline_always,
    reason = "each program stays one straight-line function: no BPF-to-BPF call on the hot \
              path, and the form the verifiers of 6.1 to 7.x accepted"
)]

use aya_ebpf::bindings::task_struct;
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_probe_read_kernel, bpf_task_pt_regs,
};
use aya_ebpf::macros::{btf_tracepoint, map, raw_tracepoint};
use aya_ebpf::maps::{Array, LruHashMap, PerCpuArray};
use aya_ebpf::programs::{BtfTracePointContext, RawTracePointContext};
use aya_log_ebpf::info;
use ctx_common::encoding::SeedState;
use ctx_common::record::{Config, CpuRecord, IrqKind, Ledger, MAX_CPUS, Meta, Source};
use ctx_common::writer::{MainEvent, irq_arrived, main_event_with, nmi_handler_ran};

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

/// Byte offsets of `orig_ax` in x86's `struct pt_regs` and of `pid` in `struct task_struct`,
/// from the running kernel's BTF; set by the loader (0: unknown, the switch program is inert).
#[unsafe(no_mangle)]
static PT_REGS_ORIG_AX_OFF: u32 = 0;
#[unsafe(no_mangle)]
static TASK_PID_OFF: u32 = 0;
/// For `ctx_sched_switch_stack`: byte offset of `stack` in `struct task_struct`, the kernel's
/// `THREAD_SIZE`, `sizeof(struct pt_regs)` and the byte offset of its `cs` (0: unknown, the
/// program finds no frame).
#[unsafe(no_mangle)]
static TASK_STACK_OFF: u32 = 0;
#[unsafe(no_mangle)]
static THREAD_SIZE: u32 = 0;
#[unsafe(no_mangle)]
static PT_REGS_SIZE: u32 = 0;
#[unsafe(no_mangle)]
static PT_REGS_CS_OFF: u32 = 0;

/// Mode each task was in when it last left a syscall-driven CPU (1 kernel, 2 user), by thread
/// id, so a switch back to it restores the mirror. LRU: exited threads age out.
#[map]
static TASK_MODE: LruHashMap<u32, u8> = LruHashMap::with_max_entries(32768, 0);

const MODE_KERNEL: u8 = 1;
const MODE_USER: u8 = 2;

/// `power:cpu_idle` passes this state on idle exit.
const PWR_EVENT_EXIT: u32 = u32::MAX;

#[inline(always)]
fn record() -> Option<*mut CpuRecord> {
    CTX_CPU.get_ptr_mut(0)
}

/// `bpf_ktime_get_ns()`, as an opaque call. Through aya's binding LLVM treats the helper as a
/// pure function and hoists it above the branches that skip it (every syscall event on a
/// context-tracking CPU would read the clock for nothing); inline assembly is never speculated.
#[inline(always)]
fn now() -> u64 {
    let t: u64;
    // SAFETY: BPF_FUNC_ktime_get_ns (5) takes no arguments and returns in r0; r1-r5 are
    // caller-saved across helper calls.
    unsafe {
        core::arch::asm!(
            "call 5",
            lateout("r0") t,
            lateout("r1") _,
            lateout("r2") _,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack),
        );
    };
    t
}

/// Only the syscall programs need this; the lookup is an inlined array access.
#[inline(always)]
fn ct_cpu() -> bool {
    // The mask changes no CPU id (MAX_CPUS is a power of two, at least NR_CPUS) but bounds the
    // very register the word index is derived from. Without it LLVM bounds-checks a
    // zero-extended copy and indexes with the unbounded original, and the 6.1 verifier rejects
    // the program ("R0 max value is outside of the allowed memory range").
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
        unsafe { main_event_with(&raw mut (*r).main, now, ev, ct_cpu) };
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
#[expect(
    clippy::cast_possible_truncation,
    reason = "raw tracepoint arguments are u64 slots; the C int is the low half"
)]
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
#[expect(
    clippy::cast_possible_truncation,
    reason = "raw tracepoint arguments are u64 slots; the C int is the low half"
)]
pub fn ctx_cpuhp_enter(ctx: RawTracePointContext) -> u32 {
    let cpu: u64 = ctx.arg(0);
    let target: u64 = ctx.arg(1);
    let idx: u64 = ctx.arg(2);
    // SAFETY: helper without preconditions.
    if cpu as u32 != unsafe { bpf_get_smp_processor_id() } {
        return 0;
    }
    let down = (target as i32) < (idx as i32);
    if let Some(r) = record() {
        // SAFETY: plain read of this CPU's own record.
        let was_offline = unsafe { (*r).main.offline } != 0;
        if down && !was_offline {
            // Cold path (runs once per hotplug, in the hotplug thread), so a log record and
            // its wakeup are acceptable here.
            info!(
                &ctx,
                "cpu {}: going offline; its time is credited to no state until it returns", cpu
            );
        }
    }
    if down {
        main_ev(MainEvent::CpuDown, false)
    } else {
        main_ev(MainEvent::CpuUp, false)
    }
}

/// `sched:sched_switch(preempt, prev, next, ...)`, for syscall-driven CPUs: syscall boundaries
/// alone lose track when a task preempted in user mode resumes there without a `sys_exit`.
///
/// On x86 a task's saved user frame has `orig_ax` = -1 when its current kernel entry is an
/// interrupt or exception, and the syscall number (>= 0) for a syscall; kernel threads' frames
/// are zeroed. So `orig_ax < 0` means the task was preempted in user mode and resumes there.
/// `orig_ax >= 0` is ambiguous: inside a syscall, or preempted on the way out of one after
/// `sys_exit`. The mode the task left in (the mirror's mode at its last switch-out, kept by
/// thread id) settles it. The frame decides first, so a stale or wrong stored mode can never
/// stick to a task that keeps running in user mode.
///
/// This variant finds the frame with `bpf_task_pt_regs` (5.15 on); the loader picks
/// [`ctx_sched_switch_stack`] on kernels without that helper.
#[btf_tracepoint(function = "sched_switch")]
pub fn ctx_sched_switch(ctx: BtfTracePointContext) -> u32 {
    switch(&ctx, |next_task| {
        // SAFETY: `next_task` is the BTF-typed task argument of the tracepoint.
        let regs = unsafe { bpf_task_pt_regs(next_task) };
        regs as *const u8
    })
}

/// The same for kernels before 5.15, which have no `bpf_task_pt_regs`: the frame is where
/// x86-64's `task_pt_regs()` puts it, the last `struct pt_regs` below the top of the task's
/// stack (`task->stack + THREAD_SIZE`, with no top-of-stack padding on x86-64). The loader
/// gives `THREAD_SIZE` and the sizes and offsets from BTF. Reading a wrong place cannot crash
/// (probe reads), and a frame whose `cs` is not a user segment (CPL 3) counts as no user frame.
#[btf_tracepoint(function = "sched_switch")]
pub fn ctx_sched_switch_stack(ctx: BtfTracePointContext) -> u32 {
    // SAFETY: globals the loader sets; volatile so the compiler cannot fold them to zero.
    let (stack_off, thread_size, regs_size, cs_off) = unsafe {
        (
            core::ptr::read_volatile(&raw const TASK_STACK_OFF),
            core::ptr::read_volatile(&raw const THREAD_SIZE),
            core::ptr::read_volatile(&raw const PT_REGS_SIZE),
            core::ptr::read_volatile(&raw const PT_REGS_CS_OFF),
        )
    };
    switch(&ctx, |next_task| {
        if thread_size == 0 || regs_size == 0 || regs_size > thread_size {
            return core::ptr::null();
        }
        // SAFETY: probe read of the task's `stack` pointer; a fault yields an error.
        let stack: u64 =
            unsafe { bpf_probe_read_kernel(field(next_task.cast_const().cast(), stack_off)) }
                .unwrap_or(0);
        if stack == 0 {
            return core::ptr::null();
        }
        let regs = (stack + u64::from(thread_size - regs_size)) as *const u8;
        // SAFETY: as above.
        let cs: u64 = unsafe { bpf_probe_read_kernel(field(regs, cs_off)) }.unwrap_or(0);
        if cs & 3 == 3 { regs } else { core::ptr::null() }
    })
}

/// The body of both switch programs; `user_frame` finds the next task's saved user frame
/// (null: none).
#[inline(always)]
fn switch(
    ctx: &BtfTracePointContext,
    user_frame: impl FnOnce(*mut task_struct) -> *const u8,
) -> u32 {
    // SAFETY: globals the loader sets; volatile so the compiler cannot fold them to zero.
    let (regs_off, pid_off) = unsafe {
        (
            core::ptr::read_volatile(&raw const PT_REGS_ORIG_AX_OFF),
            core::ptr::read_volatile(&raw const TASK_PID_OFF),
        )
    };
    let Some(r) = record() else {
        return 0;
    };
    // SAFETY: plain read of this CPU's own record, in its writer's context.
    let (source, counter) = unsafe { ((*r).main.source, (*r).main.counter) };
    if source == Source::ContextTracking as u8 || ct_cpu() {
        // Context tracking has the mode right; the switch only claims a pending user_exit, so
        // an interrupt arriving in the next task is not taken for one that found user mode.
        return main_ev(MainEvent::SwitchToKernel, true);
    }
    if regs_off == 0 || pid_off == 0 {
        return 0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the low half of pid_tgid is the thread id"
    )]
    let prev = bpf_get_current_pid_tgid() as u32;
    if prev != 0 {
        let mode = if SeedState::decode(counter) == SeedState::User {
            MODE_USER
        } else {
            MODE_KERNEL
        };
        let _ = TASK_MODE.insert(&prev, &mode, 0);
    }
    let next_task: *mut task_struct = ctx.arg(2);
    let regs = user_frame(next_task);
    // SAFETY: probe reads of kernel memory; a fault yields an error, not a crash.
    let orig_ax: i64 = if regs.is_null() {
        0
    } else {
        unsafe { bpf_probe_read_kernel(field(regs, regs_off)) }.unwrap_or(0)
    };
    let to_user = orig_ax < 0 || {
        // SAFETY: as above.
        let next: u32 =
            unsafe { bpf_probe_read_kernel(field(next_task.cast_const().cast(), pid_off)) }
                .unwrap_or(0);
        next != 0
            && TASK_MODE
                .get_ptr(&next)
                // SAFETY: a live map value.
                .is_some_and(|m| unsafe { *m } == MODE_USER)
    };
    if to_user {
        main_ev(MainEvent::SwitchToUser, false)
    } else {
        main_ev(MainEvent::SwitchToKernel, false)
    }
}

/// A field of a kernel struct at a byte offset taken from BTF, for `bpf_probe_read_kernel`,
/// which copies bytes and needs no alignment.
#[inline(always)]
fn field<T>(base: *const u8, offset: u32) -> *const T {
    base.wrapping_add(offset as usize).cast::<T>()
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
                delta.cast_signed(),
            );
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

/// Does nothing: the benchmark attaches it to every raw tracepoint ctx uses, to measure what
/// the hooks cost before ctx's programs do any work.
#[raw_tracepoint]
pub fn ctx_empty(_ctx: RawTracePointContext) -> u32 {
    0
}

/// Reads the clock and nothing else: the benchmark's third case, which separates what any
/// program that timestamps events pays from what ctx's own work costs.
#[raw_tracepoint]
pub fn ctx_clock(_ctx: RawTracePointContext) -> u32 {
    (now() & 1) as u32
}

/// The same for the one BTF tracepoint.
#[btf_tracepoint(function = "sched_switch")]
pub fn ctx_empty_switch(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; it exists to satisfy no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
