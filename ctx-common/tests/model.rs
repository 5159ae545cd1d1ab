//! Property tests: the writer code the eBPF programs run, driven by random well-nested event
//! sequences, against a reference model written independently of it.

use ctx_common::encoding::SeedState;
use ctx_common::record::{CpuRecord, IrqKind, Source};
use ctx_common::writer::{
    MainEvent, irq_arrived, main_event, nmi_enter, nmi_exit, nmi_handler_ran,
};
use ctx_common::{Arrival, CpuState};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Kernel,
    User,
}

/// The reference: what the CPU really did, and the time it spent in each state.
#[derive(Debug)]
struct Reference {
    mode: Mode,
    idle: bool,
    /// Mode (and idle) the NMI interrupted, while one is in progress.
    nmi: Option<(Mode, bool)>,
    res: [u64; 4], // user, kernel, idle, nmi
    last: u64,
    kernel_entries: u64,
    nmis: u64,
    idle_entries: u64,
}

impl Reference {
    fn state(&self) -> CpuState {
        match (self.nmi, self.mode, self.idle) {
            (Some((Mode::User, _)), ..) => CpuState::NmiFromUser,
            (Some((Mode::Kernel, _)), ..) => CpuState::NmiFromKernel,
            (None, _, true) => CpuState::Idle,
            (None, Mode::User, false) => CpuState::User,
            (None, Mode::Kernel, false) => CpuState::Kernel,
        }
    }

    fn advance(&mut self, now: u64) {
        let d = now - self.last;
        let slot = match self.state() {
            CpuState::User => 0,
            CpuState::Kernel => 1,
            CpuState::Idle => 2,
            CpuState::NmiFromUser | CpuState::NmiFromKernel => 3,
        };
        self.res[slot] += d;
        self.last = now;
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    UserEnter,
    UserExit,
    IdleEnter,
    IdleExit,
    NmiEnter,
    NmiExit,
}

/// Ops that are legal from the reference's state: context tracking is well nested.
fn legal(r: &Reference) -> Vec<Op> {
    if r.nmi.is_some() {
        return vec![Op::NmiExit];
    }
    let mut v = vec![Op::NmiEnter];
    match (r.mode, r.idle) {
        (Mode::Kernel, false) => v.extend([Op::UserEnter, Op::IdleEnter]),
        (Mode::Kernel, true) => v.push(Op::IdleExit),
        (Mode::User, _) => v.push(Op::UserExit),
    }
    v
}

fn residency_of(rec: &CpuRecord, now: u64) -> [u64; 4] {
    rec.residency(now).as_array()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Context-tracking CPU: decoded state equals the reference after every event, the counter
    /// never goes back, and residencies match the reference exactly and sum to elapsed time.
    #[test]
    fn context_tracking_sequences(
        steps in prop::collection::vec((0usize..8, 1u64..5_000_000), 1..300),
        t0 in 1u64..1_000_000_000,
    ) {
        let mut rec = CpuRecord::default();
        let mut r = Reference {
            mode: Mode::Kernel, idle: false, nmi: None, res: [0; 4], last: t0,
            kernel_entries: 0, nmis: 0, idle_entries: 0,
        };
        let mut now = t0;
        // The first event starts the record; before it, nothing is known.
        unsafe { main_event(&raw mut rec.main, now, MainEvent::UserEnter, true) };
        r.mode = Mode::User;
        let mut prev_counter = rec.counter();

        for (pick, dt) in steps {
            now += dt;
            let ops = legal(&r);
            let op = ops[pick % ops.len()];
            r.advance(now);
            unsafe {
                match op {
                    Op::UserEnter => { main_event(&raw mut rec.main, now, MainEvent::UserEnter, true); r.mode = Mode::User; }
                    Op::UserExit => { main_event(&raw mut rec.main, now, MainEvent::UserExit, true); r.mode = Mode::Kernel; r.kernel_entries += 1; }
                    Op::IdleEnter => { main_event(&raw mut rec.main, now, MainEvent::IdleEnter, true); r.idle = true; r.idle_entries += 1; }
                    Op::IdleExit => { main_event(&raw mut rec.main, now, MainEvent::IdleExit, true); r.idle = false; }
                    Op::NmiEnter => { nmi_enter(&raw mut rec.nmi, &raw const rec.main, now); r.nmi = Some((r.mode, r.idle)); r.nmis += 1; }
                    Op::NmiExit => { nmi_exit(&raw mut rec.nmi, now); r.nmi = None; }
                }
            }
            prop_assert!(rec.consistent());
            prop_assert_eq!(rec.state(), r.state(), "after {:?}", op);
            let c = rec.counter();
            if matches!(op, Op::IdleEnter | Op::IdleExit) {
                // Idle is kept apart from the seed encoding: the counter does not move.
                prop_assert_eq!(c, prev_counter);
            } else {
                prop_assert!(c > prev_counter, "counter must move on {:?}", op);
            }
            prev_counter = c;

            // Mid-interval reading includes the open interval.
            let probe = now + dt / 2;
            let mut expect = r.res;
            let open = probe - r.last;
            let slot = match r.state() {
                CpuState::User => 0, CpuState::Kernel => 1, CpuState::Idle => 2, _ => 3,
            };
            expect[slot] += open;
            prop_assert_eq!(residency_of(&rec, probe), expect);
            prop_assert_eq!(rec.residency(probe).total(), probe - t0);
        }
        prop_assert_eq!(rec.main.kernel_entries, r.kernel_entries);
        prop_assert_eq!(rec.nmi.nmis, r.nmis);
        prop_assert_eq!(rec.main.idle_entries, r.idle_entries);
        prop_assert_eq!(rec.main.resyncs, 0);
        prop_assert_eq!(rec.source(), Source::ContextTracking);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Syscall-driven CPU: sys_enter/sys_exit move the mirror; on a context-tracking CPU they
    /// only count, so nothing is counted twice.
    #[test]
    fn syscall_fallback_and_no_double_count(
        gaps in prop::collection::vec(1u64..100_000, 2..200),
    ) {
        let mut fb = CpuRecord::default();
        let mut ct = CpuRecord::default();
        let mut now = 1_000;
        let mut user = (0u64, 0u64); // (fallback user ns, ct user ns)
        unsafe {
            main_event(&raw mut fb.main, now, MainEvent::SysExit, false);
            main_event(&raw mut ct.main, now, MainEvent::UserEnter, true);
        }
        let t0 = now;
        for (i, g) in gaps.iter().enumerate() {
            if i % 2 == 0 { user.0 += g; user.1 += g; }
            now += g;
            unsafe {
                if i % 2 == 0 {
                    main_event(&raw mut fb.main, now, MainEvent::SysEnter, false);
                    main_event(&raw mut ct.main, now, MainEvent::UserExit, true);
                    main_event(&raw mut ct.main, now, MainEvent::SysEnter, true);
                } else {
                    main_event(&raw mut fb.main, now, MainEvent::SysExit, false);
                    main_event(&raw mut ct.main, now, MainEvent::SysExit, true);
                    main_event(&raw mut ct.main, now, MainEvent::UserEnter, true);
                }
            }
        }
        prop_assert_eq!(fb.source(), Source::Syscalls);
        prop_assert_eq!(ct.source(), Source::ContextTracking);
        prop_assert_eq!(fb.residency(now).user, user.0);
        prop_assert_eq!(ct.residency(now).user, user.1);
        prop_assert_eq!(fb.main.kernel_entries, ct.main.kernel_entries);
        prop_assert_eq!(fb.main.syscalls, ct.main.syscalls);
        prop_assert_eq!(ct.main.counter, fb.main.counter);
        prop_assert_eq!(ct.main.resyncs + fb.main.resyncs, 0);
        prop_assert_eq!(fb.residency(now).total(), now - t0);
    }

    /// `nmi:nmi_handler` fires once per registered handler per NMI; grouping counts NMIs, not
    /// handlers, and keeps the counter's arithmetic (+3, +1 per NMI).
    #[test]
    fn nmi_handler_grouping(
        handlers in 1usize..=4,
        nmis in prop::collection::vec((1u64..10_000, 1u64..5_000_000), 1..100),
    ) {
        let mut rec = CpuRecord::default();
        unsafe { main_event(&raw mut rec.main, 1, MainEvent::UserEnter, true) };
        let mut now = 10;
        let mut total = 0;
        for (d, gap) in &nmis {
            now += gap;
            for h in 0..handlers {
                now += d;
                unsafe { nmi_handler_ran(&raw mut rec.nmi, &raw const rec.main, now, 0xffff_0000 + h as u64, (*d).cast_signed()) };
                total += d;
                now += 50; // the tracepoint and the loop before the next handler
            }
        }
        prop_assert_eq!(rec.nmi.nmis, nmis.len() as u64);
        prop_assert_eq!(rec.nmi.counter, 4 * nmis.len() as u64);
        prop_assert_eq!(SeedState::decode(rec.counter()), SeedState::User);
        prop_assert_eq!(rec.nmi.ns_total, total);
        prop_assert_eq!(rec.nmi.ns_from[0], total);
        prop_assert!(rec.consistent());
    }

    /// Residency readings taken at increasing times never go backwards, whatever the events.
    #[test]
    fn readings_are_monotonic(
        events in prop::collection::vec((0u8..6, 0u64..1_000_000), 1..200),
    ) {
        let mut rec = CpuRecord::default();
        let mut now = 1;
        let mut prev = [0u64; 4];
        for (e, dt) in events {
            now += dt;
            unsafe {
                let m = &raw mut rec.main;
                match e {
                    0 => main_event(m, now, MainEvent::UserEnter, true),
                    1 => main_event(m, now, MainEvent::UserExit, true),
                    2 => main_event(m, now, MainEvent::IdleEnter, true),
                    3 => main_event(m, now, MainEvent::IdleExit, true),
                    4 => main_event(m, now, MainEvent::SysEnter, false),
                    _ => main_event(m, now, MainEvent::SysExit, false),
                }
            }
            let r = rec.residency(now).as_array();
            for i in 0..4 {
                prop_assert!(r[i] >= prev[i]);
            }
            prev = r;
        }
    }
}

#[test]
fn hotplug_gap_is_credited_to_no_state() {
    let mut rec = CpuRecord::default();
    unsafe {
        main_event(&raw mut rec.main, 100, MainEvent::IdleEnter, true);
        main_event(&raw mut rec.main, 200, MainEvent::IdleExit, true);
        main_event(&raw mut rec.main, 300, MainEvent::CpuDown, true);
    }
    let before = rec.residency(300);
    // Offline: readings do not grow.
    assert_eq!(rec.residency(10_000), before);
    unsafe { main_event(&raw mut rec.main, 10_000, MainEvent::CpuUp, true) };
    assert_eq!(rec.residency(10_000), before);
    assert_eq!(rec.residency(10_050).total(), before.total() + 50);
    assert_eq!(rec.state(), CpuState::Kernel);
}

#[test]
fn ipi_arrival_after_user_exit_reads_user() {
    let mut rec = CpuRecord::default();
    unsafe {
        let m = &raw mut rec.main;
        main_event(m, 1_000, MainEvent::UserEnter, true);
        // An IPI from user: context tracking exits user first, then the vector fires.
        main_event(m, 2_000, MainEvent::UserExit, true);
        irq_arrived(&raw mut rec.irq, m, 2_300, IrqKind::CallFunctionSingle);
        // A second interrupt in the same kernel stay arrived in kernel.
        irq_arrived(&raw mut rec.irq, m, 2_600, IrqKind::LocalTimer);
        main_event(m, 3_000, MainEvent::UserEnter, true);
        // A syscall, then an interrupt during it: kernel.
        main_event(m, 4_000, MainEvent::UserExit, true);
        main_event(m, 4_010, MainEvent::SysEnter, true);
        irq_arrived(&raw mut rec.irq, m, 4_020, IrqKind::Reschedule);
        main_event(m, 4_100, MainEvent::UserEnter, true);
        main_event(m, 5_000, MainEvent::IdleEnter, true);
    }
    assert_eq!(rec.irq_count(IrqKind::CallFunctionSingle, Arrival::User), 1);
    assert_eq!(rec.irq_count(IrqKind::LocalTimer, Arrival::Kernel), 1);
    assert_eq!(rec.irq_count(IrqKind::Reschedule, Arrival::Kernel), 1);
    assert_eq!(rec.main.syscalls, 1);
    assert_eq!(rec.main.kernel_entries, 2);
}

/// Fallback CPU, two tasks: A blocks in `read()`, B was preempted in user mode and resumes there
/// without a `sys_exit`. The switch keeps B's time out of kernel.
#[test]
fn fallback_follows_context_switches() {
    let mut rec = CpuRecord::default();
    let m = &raw mut rec.main;
    unsafe {
        main_event(m, 1_000, MainEvent::SysExit, false); // A in user
        main_event(m, 2_000, MainEvent::SysEnter, false); // A blocks in read()
        main_event(m, 2_100, MainEvent::SwitchToUser, false); // B resumes in user
        main_event(m, 5_100, MainEvent::SwitchToKernel, false); // A resumes inside read()
        main_event(m, 5_200, MainEvent::SysExit, false); // A back to user
    }
    let r = rec.residency(6_200);
    assert_eq!(r.user, 1_000 + 3_000 + 1_000);
    assert_eq!(r.kernel, 100 + 100);
    assert_eq!(rec.main.kernel_entries, 1, "a switch is not a kernel entry");
    assert_eq!(rec.main.resyncs, 0);
    // On a context-tracking CPU switches change nothing.
    let mut ct = CpuRecord::default();
    unsafe {
        main_event(&raw mut ct.main, 1_000, MainEvent::UserExit, true);
        main_event(&raw mut ct.main, 1_100, MainEvent::SwitchToUser, true);
    }
    assert_eq!(ct.state(), CpuState::Kernel);
}

/// A context switch claims a pending `user_exit`: an interrupt in the next task arrived in kernel.
#[test]
fn switch_claims_a_pending_user_exit() {
    let mut rec = CpuRecord::default();
    unsafe {
        let m = &raw mut rec.main;
        main_event(m, 1_000, MainEvent::UserEnter, true);
        // An exception ctx does not hook enters the kernel, and the task is switched out.
        main_event(m, 2_000, MainEvent::UserExit, true);
        main_event(m, 2_100, MainEvent::SwitchToKernel, true);
        irq_arrived(&raw mut rec.irq, m, 2_200, IrqKind::Reschedule);
    }
    assert_eq!(rec.irq_count(IrqKind::Reschedule, Arrival::Kernel), 1);
    assert_eq!(
        rec.state(),
        CpuState::Kernel,
        "a switch never moves a context-tracking CPU"
    );
}
