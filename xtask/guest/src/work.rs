//! The workloads both guests run, each on the CPU its thread is pinned to: a user-mode
//! spinner, a reader of /dev/zero (long syscalls that clear user memory in the kernel), a
//! `getppid()` loop, and membarrier IPIs to the CPUs that run the caller's other threads.

use std::fs::File;
use std::io::{self, Read as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a workload spends its time.
#[derive(Clone, Copy, Debug)]
pub enum Duty {
    /// Busy until the process ends, and never reading the clock: where the vDSO cannot read the
    /// clocksource (HPET on 6.1 under TCG), a clock read is a syscall of its own.
    Always,
    /// Busy for `busy` out of every `period`, until asked to stop. Under single-threaded TCG the
    /// vCPUs take turns of up to 100 ms, and two vCPUs busy all the time leave CPU 0 a third of
    /// the emulator; sleeping vCPUs halt and give their turn back, and the CPU still shows its
    /// busy state and idle.
    Part { busy: Duration, period: Duration },
}

impl Duty {
    /// Runs `work` as the duty says, until `stop` (never, for [`Duty::Always`]).
    fn run(self, stop: &AtomicBool, mut work: impl FnMut() -> io::Result<()>) -> io::Result<()> {
        match self {
            Self::Always => loop {
                work()?;
            },
            Self::Part { busy, period } => {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    while t.elapsed() < busy {
                        work()?;
                    }
                    std::thread::sleep(period.saturating_sub(busy));
                }
                Ok(())
            }
        }
    }
}

/// Spins in user space, never entering the kernel: a spin-wait loop as user code writes one,
/// with PAUSE in its body. Under single-threaded TCG, PAUSE also hands the emulator thread to
/// the next vCPU (target/i386 `helper_pause`), so CPU 0, where ctx samples, is not starved by the
/// spinner; without it ctxtop took 8-50 samples in 3 s instead of about 300.
pub fn spin(duty: Duty, stop: &AtomicBool) {
    let _ = duty.run(stop, || {
        for _ in 0..10_000 {
            std::hint::spin_loop();
        }
        Ok(())
    });
}

/// `read()` from /dev/zero into a buffer faulted in beforehand, so the reads never fault: long
/// syscalls that spend their time clearing user memory in the kernel.
pub struct ZeroReader {
    zero: File,
    buf: Vec<u8>,
}

impl ZeroReader {
    pub fn new(bytes: usize) -> io::Result<Self> {
        Ok(Self {
            zero: File::open("/dev/zero")?,
            // Non-zero fill touches every page now.
            buf: vec![1u8; bytes],
        })
    }

    pub fn run(mut self, duty: Duty, stop: &AtomicBool) -> io::Result<()> {
        duty.run(stop, || match self.zero.read(&mut self.buf)? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "/dev/zero returned end of file",
            )),
            _ => Ok(()),
        })
    }
}

/// `getppid()` in a loop for `limit`; returns the number of calls. Looks at the clock once every
/// 256 calls, as a clock read may be a syscall of its own ([`Duty::Always`]).
pub fn getppid_for(limit: Duration) -> u64 {
    let start = Instant::now();
    let mut n = 0u64;
    while !n.is_multiple_of(256) || start.elapsed() < limit {
        // SAFETY: no preconditions.
        std::hint::black_box(unsafe { libc::getppid() });
        n += 1;
    }
    n
}

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`, after registering for it: each call IPIs the CPUs that run
/// the caller's other threads.
pub struct Membarrier(());

impl Membarrier {
    /// From include/uapi/linux/membarrier.h.
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> io::Result<()> {
        // SAFETY: membarrier(cmd, flags = 0, cpu_id = 0) takes no pointers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                libc::c_long::from(0u8),
                libc::c_long::from(0u8),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Registers the process; from then on [`Membarrier::ipi`] works in any of its threads.
    pub fn register() -> io::Result<Self> {
        Self::call(Self::REGISTER_PRIVATE_EXPEDITED)?;
        Ok(Self(()))
    }

    pub fn ipi(&self) -> io::Result<()> {
        Self::call(Self::PRIVATE_EXPEDITED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_duty_stops_and_reader_reads() {
        let stop = AtomicBool::new(false);
        let duty = Duty::Part {
            busy: Duration::from_millis(5),
            period: Duration::from_millis(10),
        };
        let mut steps = 0;
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                stop.store(true, Ordering::Relaxed);
            });
            duty.run(&stop, || {
                steps += 1;
                Ok(())
            })
            .unwrap();
        });
        assert!(steps > 0);
        let r = ZeroReader::new(4096).unwrap();
        assert!(r.buf.iter().all(|b| *b == 1));
        r.run(duty, &stop).unwrap();
        let n = getppid_for(Duration::from_millis(1));
        assert!(n > 0 && n.is_multiple_of(256), "{n}");
    }
}
