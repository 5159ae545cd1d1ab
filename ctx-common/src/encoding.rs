//! The encoded context-tracking counter of the seed scheme.
//!
//! Each CPU owns one counter. It moves `+2` on user enter and on user exit, `+3` on NMI enter
//! and `+1` on NMI exit, so its two low bits always read the CPU's mode:
//!
//! | low bits | mode            |
//! |----------|-----------------|
//! | 0        | kernel          |
//! | 1        | NMI from user   |
//! | 2        | user            |
//! | 3        | NMI from kernel |
//!
//! Every move of the counter happens at a point where the CPU executes a full barrier, so a
//! counter that differs from an earlier reading proves the CPU passed one since.

#![expect(
    clippy::inline_always,
    reason = "compiled into every eBPF program, which stays one straight-line function: no \
              BPF-to-BPF call on the hot path, and the form the verifiers of 6.1 to 7.x accepted"
)]

/// Added on user enter and on user exit.
pub const USER_STEP: u64 = 2;
/// Added on NMI enter.
pub const NMI_ENTER_STEP: u64 = 3;
/// Added on NMI exit; with [`NMI_ENTER_STEP`] an NMI moves the counter by 4, leaving the mode.
pub const NMI_EXIT_STEP: u64 = 1;
/// The bits that hold the mode.
pub const MODE_MASK: u64 = 3;

/// The mode the seed encoding can express. Idle is not part of it (see [`CpuState`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeedState {
    Kernel = 0,
    NmiFromUser = 1,
    User = 2,
    NmiFromKernel = 3,
}

impl SeedState {
    /// Decodes the mode from a counter value.
    #[inline(always)]
    pub const fn decode(counter: u64) -> Self {
        match counter & MODE_MASK {
            0 => Self::Kernel,
            1 => Self::NmiFromUser,
            2 => Self::User,
            _ => Self::NmiFromKernel,
        }
    }

    /// A CPU in user mode picks up kernel changes on its next entry; any other mode needs an IPI.
    #[inline(always)]
    pub const fn needs_ipi(self) -> bool {
        !matches!(self, Self::User)
    }

    #[inline(always)]
    pub const fn in_nmi(self) -> bool {
        matches!(self, Self::NmiFromUser | Self::NmiFromKernel)
    }
}

#[inline(always)]
pub const fn user_enter(counter: u64) -> u64 {
    counter.wrapping_add(USER_STEP)
}

#[inline(always)]
pub const fn user_exit(counter: u64) -> u64 {
    counter.wrapping_add(USER_STEP)
}

#[inline(always)]
pub const fn nmi_enter(counter: u64) -> u64 {
    counter.wrapping_add(NMI_ENTER_STEP)
}

#[inline(always)]
pub const fn nmi_exit(counter: u64) -> u64 {
    counter.wrapping_add(NMI_EXIT_STEP)
}

/// Has the CPU passed a full barrier since the counter read `since`? Any change proves it.
#[inline(always)]
pub const fn passed_barrier(since: u64, now: u64) -> bool {
    since != now
}

/// What ctx reports per CPU: the seed mode, with idle kept apart from kernel.
///
/// An NMI that interrupts idle reads as `NmiFromKernel`: the idle loop runs in kernel mode.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CpuState {
    Kernel = 0,
    NmiFromUser = 1,
    User = 2,
    NmiFromKernel = 3,
    Idle = 4,
}

impl CpuState {
    pub const ALL: [CpuState; 5] = [
        Self::Kernel,
        Self::User,
        Self::NmiFromUser,
        Self::NmiFromKernel,
        Self::Idle,
    ];

    #[inline(always)]
    pub const fn from_parts(counter: u64, idle: bool) -> Self {
        match SeedState::decode(counter) {
            SeedState::NmiFromUser => Self::NmiFromUser,
            SeedState::NmiFromKernel => Self::NmiFromKernel,
            _ if idle => Self::Idle,
            SeedState::User => Self::User,
            SeedState::Kernel => Self::Kernel,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::NmiFromUser => "nmi_from_user",
            Self::User => "user",
            Self::NmiFromKernel => "nmi_from_kernel",
            Self::Idle => "idle",
        }
    }

    /// Whether a kernel change would need an IPI to reach this CPU now. Idle CPUs are
    /// deferrable: they pass a barrier on wakeup before running anything that could observe
    /// stale state.
    pub const fn needs_ipi(self) -> bool {
        !matches!(self, Self::User | Self::Idle)
    }
}

/// The sampler's verdict for one CPU at one sample.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// In kernel or NMI, and the counter did not move since the previous sample.
    IpiNeeded = 0,
    /// In user or idle: the CPU sees a change on its next kernel entry.
    Deferrable = 1,
    /// The counter moved since the previous sample: a barrier was passed, no IPI is needed for
    /// anything published before that sample.
    Quiesced = 2,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Self::IpiNeeded, Self::Deferrable, Self::Quiesced];

    /// `previous` is the combined counter at the previous sample, if there was one.
    #[inline]
    pub const fn of(previous: Option<u64>, counter: u64, state: CpuState) -> Self {
        if let Some(p) = previous
            && passed_barrier(p, counter)
        {
            return Self::Quiesced;
        }
        if state.needs_ipi() {
            Self::IpiNeeded
        } else {
            Self::Deferrable
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IpiNeeded => "ipi_needed",
            Self::Deferrable => "deferrable",
            Self::Quiesced => "quiesced",
        }
    }

    pub const fn ipi_needed(self) -> bool {
        matches!(self, Self::IpiNeeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_cycle_decodes() {
        let c = 0;
        assert_eq!(SeedState::decode(c), SeedState::Kernel);
        let c = user_enter(c);
        assert_eq!(SeedState::decode(c), SeedState::User);
        let c = nmi_enter(c);
        assert_eq!(SeedState::decode(c), SeedState::NmiFromUser);
        let c = nmi_exit(c);
        assert_eq!(SeedState::decode(c), SeedState::User);
        let c = user_exit(c);
        assert_eq!(SeedState::decode(c), SeedState::Kernel);
        let c = nmi_enter(c);
        assert_eq!(SeedState::decode(c), SeedState::NmiFromKernel);
        let c = nmi_exit(c);
        assert_eq!(SeedState::decode(c), SeedState::Kernel);
        assert_eq!(c, 12);
    }

    #[test]
    fn ipi_rules() {
        assert!(!SeedState::User.needs_ipi());
        assert!(SeedState::Kernel.needs_ipi());
        assert!(SeedState::NmiFromUser.needs_ipi());
        assert!(SeedState::NmiFromKernel.needs_ipi());
        assert!(!CpuState::Idle.needs_ipi());
        assert_eq!(CpuState::from_parts(3, true), CpuState::NmiFromKernel);
        assert_eq!(CpuState::from_parts(0, true), CpuState::Idle);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(None, 4, CpuState::Kernel), Verdict::IpiNeeded);
        assert_eq!(
            Verdict::of(Some(4), 4, CpuState::Kernel),
            Verdict::IpiNeeded
        );
        assert_eq!(Verdict::of(Some(4), 6, CpuState::User), Verdict::Quiesced);
        assert_eq!(Verdict::of(Some(6), 6, CpuState::User), Verdict::Deferrable);
        assert_eq!(Verdict::of(Some(4), 4, CpuState::Idle), Verdict::Deferrable);
        assert_eq!(
            Verdict::of(Some(4), 7, CpuState::NmiFromKernel),
            Verdict::Quiesced
        );
    }
}
