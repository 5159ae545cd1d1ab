//! The transitions the eBPF programs apply to a [`CpuRecord`](crate::CpuRecord).
//!
//! The same code runs in the kernel (compiled for `bpfel`) and in the property tests, so what
//! the tests prove is what the programs do. Every access is volatile: the sequence protocol
//! needs stores to reach memory in program order, and LLVM may reorder plain stores. On x86
//! (TSO) the CPU keeps that order, and the kernel's copy reads in address order.
//!
//! Everything here is branch-light and loop-free so that the 6.1 verifier accepts it.

#![expect(
    clippy::inline_always,
    reason = "compiled into every eBPF program, which stays one straight-line function: no \
              BPF-to-BPF call on the hot path, and the form the verifiers of 6.1 to 7.x accepted"
)]

use core::ptr::{read_volatile, write_volatile};

use crate::arrival::arrival;
use crate::encoding::{SeedState, nmi_enter as enc_nmi_enter, user_enter, user_exit};
use crate::record::{
    IrqKind, IrqPart, LastEvent, MainPart, N_ARRIVALS, N_IRQ_KINDS, NmiPart, SLOT_IDLE,
    SLOT_KERNEL, SLOT_USER, Source,
};

/// Handler events of one NMI follow each other closely; a larger gap starts a new NMI even if
/// the handler was not seen yet.
pub const NMI_GROUP_GAP_NS: u64 = 1_000_000;

#[inline(always)]
unsafe fn rd<T: Copy>(p: *const T) -> T {
    // SAFETY: callers pass pointers into a live record.
    unsafe { read_volatile(p) }
}

#[inline(always)]
unsafe fn wr<T>(p: *mut T, v: T) {
    // SAFETY: callers pass pointers into a live record.
    unsafe { write_volatile(p, v) }
}

#[inline(always)]
unsafe fn bump(p: *mut u64, v: u64) {
    // SAFETY: as for rd/wr.
    unsafe { wr(p, rd(p).wrapping_add(v)) }
}

/// A main-context event, named after the hook that reports it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MainEvent {
    /// `context_tracking:user_enter`
    UserEnter,
    /// `context_tracking:user_exit`
    UserExit,
    /// `raw_syscalls:sys_enter`
    SysEnter,
    /// `raw_syscalls:sys_exit`
    SysExit,
    /// `power:cpu_idle` with a state index
    IdleEnter,
    /// `power:cpu_idle` with `PWR_EVENT_EXIT`
    IdleExit,
    /// `exceptions:page_fault_user`
    Fault,
    /// CPU hotplug teardown reached this CPU
    CpuDown,
    /// CPU hotplug bring-up reached this CPU
    CpuUp,
    /// `sched:sched_switch` to a task that resumes in user mode (it was preempted there)
    SwitchToUser,
    /// `sched:sched_switch` to a task that resumes in kernel mode (inside a syscall or a
    /// fault, or a kernel thread)
    SwitchToKernel,
}

impl MainEvent {
    const fn last_event(self) -> LastEvent {
        match self {
            Self::UserEnter => LastEvent::UserEnter,
            Self::UserExit => LastEvent::UserExit,
            Self::SysEnter => LastEvent::SysEnter,
            Self::SysExit => LastEvent::SysExit,
            Self::IdleEnter => LastEvent::IdleEnter,
            Self::IdleExit => LastEvent::IdleExit,
            Self::Fault => LastEvent::Fault,
            Self::CpuDown => LastEvent::CpuDown,
            Self::CpuUp => LastEvent::CpuUp,
            Self::SwitchToUser | Self::SwitchToKernel => LastEvent::Switch,
        }
    }
}

/// Credits the open interval to the state it was spent in and starts a new one at `now`.
#[inline(always)]
unsafe fn account(m: *mut MainPart, now: u64) {
    // SAFETY: `m` is a live MainPart (caller contract).
    unsafe {
        let last = rd(&raw const (*m).last_ts);
        if now <= last {
            return;
        }
        if last != 0 && rd(&raw const (*m).offline) == 0 {
            let d = now - last;
            let slot = MainPart::slot(rd(&raw const (*m).counter), rd(&raw const (*m).idle) != 0);
            let res = &raw mut (*m).res_ns;
            match slot {
                SLOT_USER => bump(&raw mut (*res)[SLOT_USER], d),
                SLOT_KERNEL => bump(&raw mut (*res)[SLOT_KERNEL], d),
                _ => bump(&raw mut (*res)[SLOT_IDLE], d),
            }
        }
        wr(&raw mut (*m).last_ts, now);
    }
}

#[inline(always)]
unsafe fn to_user(m: *mut MainPart) {
    // SAFETY: `m` is a live MainPart.
    unsafe {
        let c = rd(&raw const (*m).counter);
        if SeedState::decode(c) == SeedState::User {
            bump(&raw mut (*m).resyncs, 1);
        } else {
            wr(&raw mut (*m).counter, user_enter(c));
        }
    }
}

#[inline(always)]
unsafe fn to_kernel(m: *mut MainPart) {
    // SAFETY: `m` is a live MainPart.
    unsafe {
        let c = rd(&raw const (*m).counter);
        if SeedState::decode(c) == SeedState::User {
            wr(&raw mut (*m).counter, user_exit(c));
            bump(&raw mut (*m).kernel_entries, 1);
        } else {
            bump(&raw mut (*m).resyncs, 1);
        }
    }
}

#[inline(always)]
unsafe fn claim_source(m: *mut MainPart, source: Source) {
    // SAFETY: `m` is a live MainPart.
    unsafe {
        let s = &raw mut (*m).source;
        // Context tracking, once seen, owns the CPU for good; syscalls only claim a fresh one.
        if rd(s) != source as u8 && (source == Source::ContextTracking || rd(s) == 0) {
            wr(s, source as u8);
        }
    }
}

/// Applies a main-context event at time `now` (`bpf_ktime_get_ns`). See [`main_event_with`].
///
/// # Safety
/// As for [`main_event_with`].
#[inline(always)]
pub unsafe fn main_event(m: *mut MainPart, now: u64, ev: MainEvent, ct_cpu: bool) {
    // SAFETY: caller contract.
    unsafe { main_event_with(m, || now, ev, ct_cpu) }
}

/// Applies a main-context event, reading the clock through `now` only when the event moves
/// time between states: on a context-tracking CPU, syscall and fault events only count, and
/// skipping the clock there saves a helper call on the isolated CPU's hottest path.
///
/// `ct_cpu`: context tracking is known to drive this CPU (it is `nohz_full` and the
/// `context_tracking` hooks are attached), so syscall events must not move its state.
///
/// # Safety
/// `m` points to the current CPU's `MainPart`, and the caller runs in main context (task
/// context or an IRQs-off path, never an interrupt handler), which is the part's only writer.
#[inline(always)]
pub unsafe fn main_event_with(
    m: *mut MainPart,
    now: impl FnOnce() -> u64,
    ev: MainEvent,
    ct_cpu: bool,
) {
    // SAFETY: caller contract.
    unsafe {
        let gen_ = rd(&raw const (*m).seq_end).wrapping_add(1);
        wr(&raw mut (*m).seq_begin, gen_);

        let ct_driven = ct_cpu || rd(&raw const (*m).source) == Source::ContextTracking as u8;
        match ev {
            MainEvent::UserEnter => {
                claim_source(m, Source::ContextTracking);
                account(m, now());
                to_user(m);
            }
            MainEvent::UserExit => {
                claim_source(m, Source::ContextTracking);
                account(m, now());
                to_kernel(m);
            }
            MainEvent::SysEnter => {
                bump(&raw mut (*m).syscalls, 1);
                if !ct_driven {
                    claim_source(m, Source::Syscalls);
                    account(m, now());
                    to_kernel(m);
                }
            }
            MainEvent::SysExit => {
                if !ct_driven {
                    claim_source(m, Source::Syscalls);
                    account(m, now());
                    to_user(m);
                }
            }
            // Syscall boundaries alone lose track across a context switch: a task preempted in
            // user mode resumes there without a sys_exit. The switch tells which mode the next
            // task resumes in. The step is the scheme's +2 (the mode flips), but it is not a
            // kernel entry: that happened earlier, unseen by this fallback.
            MainEvent::SwitchToUser | MainEvent::SwitchToKernel => {
                if !ct_driven {
                    claim_source(m, Source::Syscalls);
                    account(m, now());
                    let c = rd(&raw const (*m).counter);
                    let in_user = SeedState::decode(c) == SeedState::User;
                    if in_user != (ev == MainEvent::SwitchToUser) {
                        wr(&raw mut (*m).counter, user_enter(c));
                    }
                }
            }
            MainEvent::IdleEnter => {
                account(m, now());
                wr(&raw mut (*m).idle, 1);
                bump(&raw mut (*m).idle_entries, 1);
            }
            MainEvent::IdleExit => {
                account(m, now());
                wr(&raw mut (*m).idle, 0);
            }
            MainEvent::Fault => {
                bump(&raw mut (*m).page_faults, 1);
            }
            MainEvent::CpuDown => {
                account(m, now());
                wr(&raw mut (*m).offline, 1);
            }
            MainEvent::CpuUp => {
                // The offline gap is credited to no state: `account` skips it.
                account(m, now());
                wr(&raw mut (*m).offline, 0);
                wr(&raw mut (*m).idle, 0);
                // A CPU comes up in kernel mode; a stale user mirror steps over by the scheme.
                let c = rd(&raw const (*m).counter);
                if SeedState::decode(c) == SeedState::User {
                    wr(&raw mut (*m).counter, user_exit(c));
                    bump(&raw mut (*m).resyncs, 1);
                }
            }
        }
        let seq = &raw mut (*m).event_seq;
        wr(seq, rd(seq).wrapping_add(1));
        wr(&raw mut (*m).last_event, ev.last_event() as u8);

        wr(&raw mut (*m).seq_end, gen_);
    }
}

#[inline(always)]
unsafe fn interrupted_slot(m: *const MainPart) -> u64 {
    // SAFETY: `m` is a live MainPart; reading it from an interrupt is a plain racy read of
    // single words, which is what we want.
    unsafe { MainPart::slot(rd(&raw const (*m).counter), rd(&raw const (*m).idle) != 0) as u64 }
}

#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "a slot index (0-2) kept in a u64 word; ctx builds for 64-bit targets only"
)]
unsafe fn add_nmi_time(n: *mut NmiPart, slot: u64, d: u64) {
    // SAFETY: `n` is a live NmiPart.
    unsafe {
        bump(&raw mut (*n).ns_total, d);
        let from = &raw mut (*n).ns_from;
        match slot as usize {
            SLOT_USER => bump(&raw mut (*from)[SLOT_USER], d),
            SLOT_KERNEL => bump(&raw mut (*from)[SLOT_KERNEL], d),
            _ => bump(&raw mut (*from)[SLOT_IDLE], d),
        }
    }
}

/// NMI entry, for hooks that see it (fentry on an NMI path): `+3`, and the NMI stays visible
/// until [`nmi_exit`].
///
/// # Safety
/// NMI context on the CPU that owns `n`; `m` is the same CPU's `MainPart`.
#[inline(always)]
pub unsafe fn nmi_enter(n: *mut NmiPart, m: *const MainPart, now: u64) {
    // SAFETY: caller contract.
    unsafe {
        let gen_ = rd(&raw const (*n).seq_end).wrapping_add(1);
        wr(&raw mut (*n).seq_begin, gen_);
        let c = &raw mut (*n).counter;
        wr(c, enc_nmi_enter(rd(c)));
        bump(&raw mut (*n).nmis, 1);
        wr(&raw mut (*n).enter_ts, now);
        wr(&raw mut (*n).enter_slot, interrupted_slot(m));
        wr(&raw mut (*n).seq_end, gen_);
    }
}

/// NMI exit: `+1`, and the NMI's time is moved out of the state it interrupted.
///
/// # Safety
/// As for [`nmi_enter`].
#[inline(always)]
pub unsafe fn nmi_exit(n: *mut NmiPart, now: u64) {
    // SAFETY: caller contract.
    unsafe {
        let c = &raw mut (*n).counter;
        if rd(c) & crate::encoding::MODE_MASK == 0 {
            // Exit without a matching entry (attached mid-NMI): nothing to close.
            return;
        }
        let gen_ = rd(&raw const (*n).seq_end).wrapping_add(1);
        wr(&raw mut (*n).seq_begin, gen_);
        let d = now.saturating_sub(rd(&raw const (*n).enter_ts));
        add_nmi_time(n, rd(&raw const (*n).enter_slot), d);
        wr(c, crate::encoding::nmi_exit(rd(c)));
        wr(&raw mut (*n).seq_end, gen_);
    }
}

/// Decides whether an `nmi:nmi_handler` event starts a new NMI. The kernel calls every
/// registered handler of a type once per NMI, so a handler seen again starts a new one.
#[inline(always)]
unsafe fn nmi_group(n: *mut NmiPart, handler: u64, now: u64, delta: u64) -> bool {
    // SAFETY: `n` is a live NmiPart in NMI context.
    unsafe {
        let h = &raw mut (*n).group_handlers;
        let len = rd(&raw const (*n).group_len);
        let last = rd(&raw const (*n).group_last_ts);
        let start = now.saturating_sub(delta);
        let seen = (len > 0 && rd(&raw const (*h)[0]) == handler)
            || (len > 1 && rd(&raw const (*h)[1]) == handler)
            || (len > 2 && rd(&raw const (*h)[2]) == handler)
            || (len > 3 && rd(&raw const (*h)[3]) == handler);
        let new = len == 0 || seen || start > last.saturating_add(NMI_GROUP_GAP_NS);
        if new {
            wr(&raw mut (*h)[0], handler);
            wr(&raw mut (*n).group_len, 1);
        } else {
            match len {
                1 => wr(&raw mut (*h)[1], handler),
                2 => wr(&raw mut (*h)[2], handler),
                3 => wr(&raw mut (*h)[3], handler),
                _ => {}
            }
            if len < 4 {
                wr(&raw mut (*n).group_len, len + 1);
            }
        }
        wr(&raw mut (*n).group_last_ts, now);
        new
    }
}

/// `nmi:nmi_handler`: one handler of an NMI ran for `delta_ns` and returned just now. The first
/// handler of each NMI moves the counter by the scheme's `+3` then `+1`; every handler's time is
/// NMI time.
///
/// # Safety
/// As for [`nmi_enter`].
#[inline(always)]
pub unsafe fn nmi_handler_ran(
    n: *mut NmiPart,
    m: *const MainPart,
    now: u64,
    handler: u64,
    delta_ns: i64,
) {
    // SAFETY: caller contract.
    unsafe {
        let d = if delta_ns > 0 {
            delta_ns.cast_unsigned()
        } else {
            0
        };
        let new = nmi_group(n, handler, now, d);
        let gen_ = rd(&raw const (*n).seq_end).wrapping_add(1);
        wr(&raw mut (*n).seq_begin, gen_);
        if new {
            let c = &raw mut (*n).counter;
            wr(c, enc_nmi_enter(rd(c)));
            bump(&raw mut (*n).nmis, 1);
            wr(c, crate::encoding::nmi_exit(rd(c)));
        }
        add_nmi_time(n, interrupted_slot(m), d);
        wr(&raw mut (*n).seq_end, gen_);
    }
}

/// An interrupt of `kind` arrived; counts it by the state the CPU was in when it arrived.
///
/// # Safety
/// Hard-IRQ context on the CPU that owns `i`; `m` is the same CPU's `MainPart`.
#[inline(always)]
pub unsafe fn irq_arrived(i: *mut IrqPart, m: *const MainPart, now: u64, kind: IrqKind) {
    // SAFETY: caller contract.
    unsafe {
        let seq = rd(&raw const (*m).event_seq);
        let claimed = &raw mut (*i).claimed_seq;
        let a = arrival(
            rd(&raw const (*m).counter),
            rd(&raw const (*m).idle) != 0,
            rd(&raw const (*m).last_event),
            seq != rd(claimed),
            now.saturating_sub(rd(&raw const (*m).last_ts)),
        );
        wr(claimed, seq);
        let idx = kind as usize * N_ARRIVALS + a as usize;
        if idx < N_IRQ_KINDS * N_ARRIVALS {
            bump((&raw mut (*i).counts).cast::<u64>().add(idx), 1);
        }
    }
}
