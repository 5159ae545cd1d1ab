//! The state a CPU was in when an interrupt arrived.
//!
//! On a CPU driven by context tracking, the kernel runs `user_exit` before an interrupt's vector
//! tracepoint fires, so at that tracepoint the mirror already reads kernel. What tells an arrival
//! from user is that the last main event was that `user_exit` and that nothing claimed it since:
//! every entry cause ctx hooks (a syscall, a user page fault, an interrupt) and every context
//! switch claims the pending exit. Idle is told the same way: either the CPU is still inside its
//! idle period (HLT-style idle handles the interrupt there), or it just left idle and nothing
//! happened since (MWAIT-style idle with IRQs off handles it right after `cpu_idle` exit).
//!
//! What ctx does not hook are exceptions other than user page faults (int3, #UD, #GP, FPU
//! traps): an interrupt arriving while the kernel handles one would be taken for a user
//! arrival. The time bound keeps that error from outliving such a handler. It is generous on
//! purpose: between `user_exit` and the vector tracepoint a vCPU can be descheduled by its host;
//! under TCG emulation the gap was measured at a median of 8-10 µs with a tail up to 1.8 ms.
//!
//! On a CPU driven by syscalls the mirror never left user for an interrupt, so it reads user
//! directly.

use crate::encoding::SeedState;
use crate::record::{Arrival, LastEvent};

/// How recent an unclaimed `user_exit` or idle exit must be to be the interrupt's own entry.
pub const ARRIVAL_WINDOW_NS: u64 = 10_000_000;

#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "compiled into every eBPF program, which stays one straight-line function: no \
              BPF-to-BPF call on the hot path, and the form the verifiers of 6.1 to 7.x accepted"
)]
pub fn arrival(
    main_counter: u64,
    idle: bool,
    last_event: u8,
    unclaimed: bool,
    since_last_event_ns: u64,
) -> Arrival {
    let fresh = unclaimed && since_last_event_ns < ARRIVAL_WINDOW_NS;
    if idle || (fresh && last_event == LastEvent::IdleExit as u8) {
        Arrival::Idle
    } else if (fresh && last_event == LastEvent::UserExit as u8)
        || SeedState::decode(main_counter) == SeedState::User
    {
        Arrival::User
    } else {
        Arrival::Kernel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_user_via_context_tracking() {
        // Mirror already reads kernel (counter 4), last event a fresh unclaimed user_exit.
        assert_eq!(
            arrival(4, false, LastEvent::UserExit as u8, true, 800),
            Arrival::User
        );
        // Claimed by an earlier interrupt: this one arrived in kernel.
        assert_eq!(
            arrival(4, false, LastEvent::UserExit as u8, false, 800),
            Arrival::Kernel
        );
        // Too old to be this interrupt's entry.
        assert_eq!(
            arrival(4, false, LastEvent::UserExit as u8, true, ARRIVAL_WINDOW_NS),
            Arrival::Kernel
        );
        // A syscall claimed the entry.
        assert_eq!(
            arrival(4, false, LastEvent::SysEnter as u8, true, 10),
            Arrival::Kernel
        );
    }

    #[test]
    fn idle_and_fallback() {
        assert_eq!(
            arrival(0, true, LastEvent::IdleEnter as u8, false, 1 << 40),
            Arrival::Idle
        );
        assert_eq!(
            arrival(0, false, LastEvent::IdleExit as u8, true, 100),
            Arrival::Idle
        );
        assert_eq!(
            arrival(0, false, LastEvent::IdleExit as u8, false, 100),
            Arrival::Kernel
        );
        // Syscall-driven CPU in user: the mirror says user.
        assert_eq!(
            arrival(2, false, LastEvent::SysExit as u8, false, 1 << 40),
            Arrival::User
        );
    }
}
