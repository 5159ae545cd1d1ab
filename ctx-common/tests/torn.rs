//! The sequence pair under real concurrency: a writer thread applies events to a record while a
//! reader copies it word by word in ascending address order, as the kernel's per-CPU map copy
//! does. Every copy the pair accepts must satisfy the record's invariants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ctx_common::record::CpuRecord;
use ctx_common::writer::{MainEvent, main_event};

struct Shared(*mut CpuRecord);
// SAFETY: the test coordinates access by hand: one writer, racy readers that validate.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

fn copy_ascending(src: *const CpuRecord) -> CpuRecord {
    let mut out = CpuRecord::default();
    let words = size_of::<CpuRecord>() / 8;
    let s = src.cast::<u64>();
    let d = (&raw mut out).cast::<u64>();
    for i in 0..words {
        // SAFETY: both are valid for `words` u64s.
        unsafe { d.add(i).write(s.add(i).read_volatile()) };
    }
    out
}

#[test]
fn accepted_copies_are_never_torn() {
    const T0: u64 = 1_000;
    let rec: &'static mut CpuRecord = Box::leak(Box::default());
    let p = Arc::new(Shared(rec));
    let stop = Arc::new(AtomicBool::new(false));

    let w = {
        let p = Arc::clone(&p);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut now = T0;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                now += 1 + (n % 7);
                let ev = if n.is_multiple_of(2) {
                    MainEvent::UserEnter
                } else {
                    MainEvent::UserExit
                };
                // SAFETY: the only writer of this record.
                unsafe { main_event(&raw mut (*p.0).main, now, ev, true) };
                n += 1;
            }
            n
        })
    };

    let (mut accepted, mut rejected) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        let c = copy_ascending(p.0);
        if !c.main.consistent() {
            rejected += 1;
            continue;
        }
        accepted += 1;
        let m = &c.main;
        if m.last_ts == 0 {
            continue;
        }
        // Closed residency covers exactly [first event, last_ts]; the mode and the entry count agree
        // with the number of transitions.
        let sum: u64 = m.res_ns.iter().sum();
        assert_eq!(sum, m.last_ts - (T0 + 1), "torn copy accepted: {m:?}");
        assert_eq!(
            m.counter,
            2 * (u64::from(m.event_seq) - 1) + 2,
            "torn copy accepted: {m:?}"
        );
        assert_eq!(
            m.kernel_entries,
            u64::from(m.event_seq) / 2,
            "torn copy accepted: {m:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let writes = w.join().unwrap();
    eprintln!("writes={writes} accepted={accepted} rejected={rejected}");
    assert!(accepted > 1000, "reader made too little progress");
}
