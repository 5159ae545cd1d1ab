//! The per-CPU record that ctx's eBPF programs write and user space reads.
//!
//! One [`CpuRecord`] per CPU lives in a `BPF_MAP_TYPE_PERCPU_ARRAY`. It is split into three
//! parts, each written from exactly one kind of context, so no part ever has two writers that
//! can interrupt each other on the same CPU:
//!
//! * [`MainPart`]: task context and IRQs-off paths (context tracking, syscalls, idle, faults,
//!   hotplug). Those run with preemption disabled and never from an interrupt handler.
//! * [`NmiPart`]: NMI context only.
//! * [`IrqPart`]: hard-IRQ context only; Linux does not nest hard IRQs.
//!
//! The seed scheme's single counter is mirrored as `main.counter + nmi.counter`: addition
//! commutes, so the sum moves exactly as the scheme's counter would, while each half keeps a
//! single writer and needs no atomic instruction on the hot path.
//!
//! `MainPart` and `NmiPart` carry a sequence pair so that a copy made while their CPU writes is
//! detected. The writer stores `seq_begin` (the part's last word) first and `seq_end` (its first
//! word) last; the kernel copies a per-CPU value from low to high addresses, so a copy that reads
//! the same value in both words saw no write in between. `IrqPart` holds independent
//! counters that are read one aligned word at a time and need no such pair.

use crate::encoding::{CpuState, MODE_MASK, SeedState};

pub const CACHE_LINE: usize = 64;

/// The layout of everything the programs and user space share through pinned maps, as one
/// number: a hash of each shared type's size and alignment and of each field's offset,
/// computed at compile time. A layout change changes it without anyone remembering to bump
/// it; pinned maps of another value are not reused. Never 0, which a [`Meta`] that was created
/// but never written reads.
pub const ABI_VERSION: u32 = abi_of(&layout_words());

macro_rules! layout {
    ($w:ident, $i:ident, $t:ty { $($f:ident),* $(,)? }) => {
        $w[$i] = core::mem::size_of::<$t>() as u64;
        $w[$i + 1] = core::mem::align_of::<$t>() as u64;
        $i += 2;
        $(
            $w[$i] = core::mem::offset_of!($t, $f) as u64;
            $i += 1;
        )*
    };
}

/// Sizes, alignments and field offsets of the shared types, in a fixed order.
const fn layout_words() -> [u64; LAYOUT_WORDS] {
    let mut w = [0u64; LAYOUT_WORDS];
    let mut i = 0;
    layout!(
        w,
        i,
        MainPart {
            seq_end,
            counter,
            last_ts,
            res_ns,
            kernel_entries,
            syscalls,
            page_faults,
            idle_entries,
            event_seq,
            idle,
            source,
            last_event,
            offline,
            resyncs,
            reserved,
            seq_begin,
        }
    );
    layout!(
        w,
        i,
        NmiPart {
            seq_end,
            counter,
            nmis,
            ns_total,
            ns_from,
            enter_ts,
            enter_slot,
            seq_begin,
            group_last_ts,
            group_handlers,
            group_len,
        }
    );
    layout!(
        w,
        i,
        IrqPart {
            counts,
            claimed_seq,
            pad,
            reserved
        }
    );
    layout!(w, i, CpuRecord { main, nmi, irq });
    layout!(
        w,
        i,
        Meta {
            magic,
            abi,
            hooks_attached,
            attached_at_ns,
            attached_mono_ns,
            attached_by_pid,
            pad,
            reserved,
        }
    );
    layout!(w, i, Config { ct_cpus });
    layout!(w, i, Ledger { words });
    w[i] = MAX_CPUS as u64;
    w[i + 1] = LEDGER_GLOBAL_ENTRIES as u64;
    assert!(
        i + 2 == LAYOUT_WORDS,
        "LAYOUT_WORDS must count every word above"
    );
    w
}

const LAYOUT_WORDS: usize = 2 * 7 + 16 + 11 + 4 + 3 + 8 + 1 + 1 + 2;

/// FNV-1a (32 bit) over the words' little-endian bytes; 0 is mapped away.
const fn abi_of(words: &[u64]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < words.len() {
        let b = words[i].to_le_bytes();
        let mut j = 0;
        while j < 8 {
            h ^= b[j] as u32;
            h = h.wrapping_mul(0x0100_0193);
            j += 1;
        }
        i += 1;
    }
    if h == 0 { 1 } else { h }
}
/// "ctx\0rec\0" as little-endian bytes: marks a [`Meta`] written by ctx.
pub const META_MAGIC: u64 = u64::from_le_bytes(*b"ctx\0rec\0");

/// Upper bound of CPUs the eBPF side has a bitmap for (Linux's `NR_CPUS` maximum is 8192).
pub const MAX_CPUS: usize = 8192;
pub const CPU_MASK_WORDS: usize = MAX_CPUS / 64;

/// Residency slots kept by [`MainPart`] (NMI time lives in [`NmiPart`]).
pub const SLOT_USER: usize = 0;
pub const SLOT_KERNEL: usize = 1;
pub const SLOT_IDLE: usize = 2;
pub const MAIN_SLOTS: usize = 3;

/// Where a CPU's mode transitions come from.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// No event seen yet.
    None = 0,
    /// `context_tracking:user_enter`/`user_exit`: every user/kernel transition, exactly.
    ContextTracking = 1,
    /// `raw_syscalls:sys_enter`/`sys_exit`: syscall boundaries only.
    Syscalls = 2,
}

impl Source {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::ContextTracking,
            2 => Self::Syscalls,
            _ => Self::None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ContextTracking => "context_tracking",
            Self::Syscalls => "syscalls",
        }
    }
}

/// The last main-context event on a CPU; interrupt programs use it to tell the state at
/// arrival (see [`crate::arrival`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LastEvent {
    None = 0,
    UserEnter = 1,
    UserExit = 2,
    SysEnter = 3,
    SysExit = 4,
    IdleEnter = 5,
    IdleExit = 6,
    Fault = 7,
    CpuDown = 8,
    CpuUp = 9,
    Switch = 10,
}

/// Interrupt kinds counted per CPU. The first four are IPIs.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IrqKind {
    Reschedule = 0,
    CallFunction = 1,
    CallFunctionSingle = 2,
    IrqWork = 3,
    LocalTimer = 4,
    Device = 5,
}

pub const N_IRQ_KINDS: usize = 6;

impl IrqKind {
    pub const ALL: [IrqKind; N_IRQ_KINDS] = [
        Self::Reschedule,
        Self::CallFunction,
        Self::CallFunctionSingle,
        Self::IrqWork,
        Self::LocalTimer,
        Self::Device,
    ];
    pub const IPIS: [IrqKind; 4] = [
        Self::Reschedule,
        Self::CallFunction,
        Self::CallFunctionSingle,
        Self::IrqWork,
    ];

    /// Vector name as x86 calls it (the `irq_vectors:*_entry` tracepoints).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reschedule => "reschedule",
            Self::CallFunction => "call_function",
            Self::CallFunctionSingle => "call_function_single",
            Self::IrqWork => "irq_work",
            Self::LocalTimer => "local_timer",
            Self::Device => "device",
        }
    }

    pub const fn is_ipi(self) -> bool {
        (self as u8) < 4
    }
}

/// The state a CPU was in when an interrupt arrived.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arrival {
    User = 0,
    Kernel = 1,
    Idle = 2,
}

pub const N_ARRIVALS: usize = 3;

impl Arrival {
    pub const ALL: [Arrival; N_ARRIVALS] = [Self::User, Self::Kernel, Self::Idle];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Kernel => "kernel",
            Self::Idle => "idle",
        }
    }

    /// Arrival in user or idle is the avoidable kind: nothing there needed the interrupt now.
    pub const fn avoidable(self) -> bool {
        !matches!(self, Self::Kernel)
    }
}

/// Written from task context and IRQs-off paths only. 128 bytes.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MainPart {
    /// Written last by a writer; equal to `seq_begin` when the part is consistent.
    pub seq_end: u64,
    /// The user-enter/exit half of the encoded counter: low bits 0 (kernel) or 2 (user).
    pub counter: u64,
    /// `bpf_ktime_get_ns()` of the last transition: the open interval starts here.
    pub last_ts: u64,
    /// Closed residency in ns, by `SLOT_*`. Includes NMI time, which [`NmiPart`] carves out.
    pub res_ns: [u64; MAIN_SLOTS],
    /// User to kernel transitions (every entry with context tracking, syscalls otherwise).
    pub kernel_entries: u64,
    pub syscalls: u64,
    pub page_faults: u64,
    pub idle_entries: u64,
    /// Bumped on every main event; interrupts record the value they attributed.
    pub event_seq: u32,
    pub idle: u8,
    /// A [`Source`].
    pub source: u8,
    /// A [`LastEvent`].
    pub last_event: u8,
    /// Nonzero between CPU teardown and bring-up: the gap is credited to no state.
    pub offline: u8,
    /// Events that did not match the mirrored state (a missed transition); the mirror
    /// resynchronised on them.
    pub resyncs: u64,
    pub reserved: [u64; 3],
    /// Written first by a writer.
    pub seq_begin: u64,
}

/// Written from NMI context only. 128 bytes.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NmiPart {
    pub seq_end: u64,
    /// The NMI half of the encoded counter: +3 on NMI enter, +1 on NMI exit.
    pub counter: u64,
    pub nmis: u64,
    pub ns_total: u64,
    /// NMI time by the `SLOT_*` the NMI interrupted.
    pub ns_from: [u64; MAIN_SLOTS],
    /// Start of the NMI in progress, when `counter` reads "in NMI".
    pub enter_ts: u64,
    /// The `SLOT_*` the NMI in progress interrupted.
    pub enter_slot: u64,
    pub seq_begin: u64,
    /// Grouping of `nmi:nmi_handler` events into NMIs (one event per handler); not read by
    /// user space.
    pub group_last_ts: u64,
    pub group_handlers: [u64; NMI_GROUP_HANDLERS],
    pub group_len: u64,
}

pub const NMI_GROUP_HANDLERS: usize = 4;

/// Written from hard-IRQ context only. 192 bytes.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqPart {
    /// Interrupts by `IrqKind as usize * N_ARRIVALS + Arrival as usize`.
    pub counts: [u64; N_IRQ_KINDS * N_ARRIVALS],
    /// The `MainPart::event_seq` last attributed to an interrupt.
    pub claimed_seq: u32,
    pub pad: u32,
    pub reserved: [u64; 5],
}

/// One CPU's record. 448 bytes, seven cache lines.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuRecord {
    pub main: MainPart,
    pub nmi: NmiPart,
    pub irq: IrqPart,
}

/// Written once by the user space that loaded the programs, into a one-entry array map, so a
/// later daemon or ctxtop can reuse pinned maps knowing what they hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub magic: u64,
    pub abi: u32,
    /// Bit `h` set: hook `h` (an index into the loader's hook table) is attached.
    pub hooks_attached: u32,
    /// `CLOCK_REALTIME` ns when the programs were attached.
    pub attached_at_ns: u64,
    /// `CLOCK_MONOTONIC` ns at the same moment.
    pub attached_mono_ns: u64,
    /// Process that attached.
    pub attached_by_pid: u32,
    pub pad: u32,
    /// Words 0-2: the kernel ids of the other pinned maps, two to a word in
    /// `ctx_common::programs::MAPS` order (`CTX_META` skipped), recorded by the daemon after each
    /// start, so a later start can tell a pin replaced by another map of the same shape without
    /// the privilege to ask the programs which maps they use. 0: not recorded.
    pub reserved: [u64; 4],
}

/// Set by the loader, read by the syscall programs: CPUs whose transitions context tracking
/// reports, where syscall events must only count. One-entry array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub ct_cpus: [u64; CPU_MASK_WORDS],
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ct_cpus: [0; CPU_MASK_WORDS],
        }
    }
}

impl Config {
    pub fn set_ct_cpu(&mut self, cpu: u32) {
        if let Some(w) = self.ct_cpus.get_mut(cpu as usize / 64) {
            *w |= 1 << (cpu % 64);
        }
    }

    pub fn ct_cpu(&self, cpu: u32) -> bool {
        self.ct_cpus
            .get(cpu as usize / 64)
            .is_some_and(|w| w >> (cpu % 64) & 1 == 1)
    }
}

/// User-space counters that must survive a daemon restart (the sampler's verdict counts and
/// its own totals), in an array map pinned beside the kernel-written ones. The eBPF side only
/// declares the map; the meaning of the words is user space's (see ctx-daemon's `ledger`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub words: [u64; 8],
}

/// Entries of the ledger map past the per-CPU ones (the sampler's totals and its sweep
/// histogram); the loader sizes the map to the possible CPUs plus these.
pub const LEDGER_GLOBAL_ENTRIES: u32 = 2;

const _: () = {
    assert!(core::mem::size_of::<Config>() == MAX_CPUS / 8);
    assert!(core::mem::size_of::<Ledger>() == CACHE_LINE);
    assert!(core::mem::size_of::<MainPart>() == 2 * CACHE_LINE);
    assert!(core::mem::size_of::<NmiPart>() == 2 * CACHE_LINE);
    assert!(core::mem::size_of::<IrqPart>() == 3 * CACHE_LINE);
    assert!(core::mem::size_of::<CpuRecord>() == 7 * CACHE_LINE);
    assert!(core::mem::align_of::<CpuRecord>() == CACHE_LINE);
    assert!(core::mem::size_of::<Meta>() == 72);
    assert!(core::mem::offset_of!(MainPart, seq_end) == 0);
    assert!(core::mem::offset_of!(MainPart, seq_begin) == 2 * CACHE_LINE - 8);
    assert!(core::mem::offset_of!(NmiPart, seq_end) == 0);
};

#[cfg(test)]
mod abi_tests {
    use super::*;

    #[test]
    fn the_abi_follows_the_layout() {
        assert_ne!(ABI_VERSION, 0);
        let mut w = layout_words();
        assert_eq!(abi_of(&w), ABI_VERSION);
        // Any moved field gives another ABI.
        w[3] += 8;
        assert_ne!(abi_of(&w), ABI_VERSION);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` structs of integers whose explicit fields fill every byte (the
    // size assertions above pin the layout), so any bit pattern is valid.
    unsafe impl aya::Pod for super::CpuRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Meta {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Ledger {}
}

impl MainPart {
    pub const fn consistent(&self) -> bool {
        self.seq_end == self.seq_begin
    }

    /// The slot the open interval belongs to.
    #[inline(always)]
    #[expect(
        clippy::inline_always,
        reason = "compiled into every eBPF program, which stays one straight-line function: no \
                  BPF-to-BPF call on the hot path, and the form the verifiers of 6.1 to 7.x accepted"
    )]
    pub const fn slot(counter: u64, idle: bool) -> usize {
        if idle {
            SLOT_IDLE
        } else if counter & MODE_MASK == SeedState::User as u64 {
            SLOT_USER
        } else {
            SLOT_KERNEL
        }
    }
}

impl NmiPart {
    pub const fn consistent(&self) -> bool {
        self.seq_end == self.seq_begin
    }

    pub const fn in_nmi(&self) -> bool {
        self.counter & MODE_MASK != 0
    }
}

/// Residency in ns by state, including the interval still open at the time of reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Residency {
    pub user: u64,
    pub kernel: u64,
    pub idle: u64,
    pub nmi: u64,
}

impl Residency {
    pub const fn total(&self) -> u64 {
        self.user + self.kernel + self.idle + self.nmi
    }

    pub const fn as_array(&self) -> [u64; 4] {
        [self.user, self.kernel, self.idle, self.nmi]
    }
}

impl CpuRecord {
    /// Both sequence-protected parts were copied without a concurrent write.
    pub const fn consistent(&self) -> bool {
        self.main.consistent() && self.nmi.consistent()
    }

    /// The mirrored seed counter.
    pub const fn counter(&self) -> u64 {
        self.main.counter.wrapping_add(self.nmi.counter)
    }

    pub const fn state(&self) -> CpuState {
        CpuState::from_parts(self.counter(), self.main.idle != 0)
    }

    pub const fn source(&self) -> Source {
        Source::from_u8(self.main.source)
    }

    /// Whether any event has been recorded on this CPU.
    pub const fn started(&self) -> bool {
        self.main.last_ts != 0
    }

    /// Residency up to `now` (`CLOCK_MONOTONIC` ns, the clock of `bpf_ktime_get_ns`): closed
    /// intervals plus the one still open, with NMI time moved out of the state it interrupted.
    ///
    /// Read `now` *before* copying the record: then the open interval never extends past a
    /// transition the copy missed, and successive readings do not go backwards.
    pub fn residency(&self, now: u64) -> Residency {
        let m = &self.main;
        let n = &self.nmi;
        let mut main = m.res_ns;
        if m.last_ts != 0 && m.offline == 0 {
            let slot = MainPart::slot(m.counter, m.idle != 0);
            main[slot] = main[slot].saturating_add(now.saturating_sub(m.last_ts));
        }
        let mut from = n.ns_from;
        let mut nmi = n.ns_total;
        if n.in_nmi() {
            let open = now.saturating_sub(n.enter_ts);
            let slot =
                usize::try_from(n.enter_slot).map_or(MAIN_SLOTS - 1, |s| s.min(MAIN_SLOTS - 1));
            from[slot] = from[slot].saturating_add(open);
            nmi = nmi.saturating_add(open);
        }
        Residency {
            user: main[SLOT_USER].saturating_sub(from[SLOT_USER]),
            kernel: main[SLOT_KERNEL].saturating_sub(from[SLOT_KERNEL]),
            idle: main[SLOT_IDLE].saturating_sub(from[SLOT_IDLE]),
            nmi,
        }
    }

    pub fn irq_count(&self, kind: IrqKind, arrival: Arrival) -> u64 {
        self.irq.counts[kind as usize * N_ARRIVALS + arrival as usize]
    }

    pub fn irq_total(&self, kind: IrqKind) -> u64 {
        Arrival::ALL.iter().map(|a| self.irq_count(kind, *a)).sum()
    }
}
