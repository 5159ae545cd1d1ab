//! The few system calls and procfs/sysfs files the guest needs.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::Path;
use std::{fs, io};

use anyhow::{Context as _, bail};

/// Pins the calling thread to one CPU and checks it now runs there.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    pin(0, &[cpu]).with_context(|| format!("pinning to CPU {cpu}"))?;
    // sched_setaffinity migrates the caller before it returns.
    // SAFETY: no preconditions.
    let now = unsafe { libc::sched_getcpu() };
    if usize::try_from(now).ok() != Some(cpu) {
        bail!("pinned to CPU {cpu} but running on CPU {now}");
    }
    Ok(())
}

/// `sched_setaffinity(pid, cpus)`; pid 0 is the calling thread.
pub fn pin(pid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus {
        // SAFETY: `set` is a valid cpu_set_t; CPU_SET ignores ids beyond its size.
        unsafe { libc::CPU_SET(*c, &mut set) };
    }
    // SAFETY: valid set and size.
    let rc = unsafe {
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mount(2)`, creating the mount point first.
pub fn mount(source: &str, target: &str, fstype: &str) -> anyhow::Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    let c = |s: &str| CString::new(s).with_context(|| format!("{s:?} has a NUL byte"));
    let (src, tgt, ty) = (c(source)?, c(target)?, c(fstype)?);
    // SAFETY: valid C strings, no data.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        bail!("mounting {fstype} on {target}: {e}");
    }
    Ok(())
}

pub fn read(path: impl AsRef<Path>) -> anyhow::Result<String> {
    let path = path.as_ref();
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn write(path: impl AsRef<Path>, text: &str) -> anyhow::Result<()> {
    let path = path.as_ref();
    fs::write(path, text).with_context(|| format!("writing {text:?} to {}", path.display()))
}

/// Writes back what is on disk and powers the machine off. With `-no-reboot` qemu then exits.
pub fn power_off() -> ! {
    // SAFETY: no preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Only reached if reboot(2) failed; PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Does what an administrator of a `nohz_full` host does (Documentation/admin-guide/
/// kernel-per-CPU-kthreads.rst): moves every task that may move, and every device interrupt,
/// to the housekeeping CPU. Per-CPU kthreads refuse (EINVAL) and stay. Without this, a kthread
/// that last ran on a `nohz_full` CPU (kcompactd on 6.1, kdamond on 7.2) keeps being woken there
/// by IPIs, whatever ctx does. Returns (tasks moved, interrupts moved).
pub fn move_to_housekeeping(cpu: usize) -> (usize, usize) {
    let mut tasks = 0;
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pin(pid, &[cpu]).is_ok() {
                tasks += 1;
            }
        }
    }
    let mut irqs = 0;
    if let Ok(dir) = fs::read_dir("/proc/irq") {
        for e in dir.flatten() {
            let p = e.path().join("smp_affinity_list");
            if p.exists() && fs::write(&p, cpu.to_string()).is_ok() {
                irqs += 1;
            }
        }
    }
    // Unbound workqueues; nohz_full already restricts them on recent kernels.
    let _ = fs::write(
        "/sys/devices/virtual/workqueue/cpumask",
        format!("{:x}", 1u64 << cpu),
    );
    (tasks, irqs)
}

/// Kernel log records of `max_level` or more severe (lower), from the whole /dev/kmsg buffer:
/// (level, text).
pub fn kmsg(max_level: u8) -> anyhow::Result<Vec<(u8, String)>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .context("opening /dev/kmsg")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        // One record per read: "prio,seq,usec,flags;text\n" and dictionary lines.
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue, // overwritten records
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("reading /dev/kmsg"),
        };
        let rec = String::from_utf8_lossy(&buf[..n]);
        let Some((head, text)) = rec.split_once(';') else {
            continue;
        };
        let level = head
            .split(',')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .map_or(7, |p| (p & 7) as u8);
        if level <= max_level {
            let text = text.lines().next().unwrap_or("").to_owned();
            out.push((level, text));
        }
    }
    Ok(out)
}

/// /proc/interrupts: per row (`CAL`, `NMI`, `0`, ...), the count per CPU. Offline CPUs have no
/// column, so columns are mapped through the header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interrupts {
    pub rows: BTreeMap<String, BTreeMap<u32, u64>>,
}

impl Interrupts {
    pub fn read() -> anyhow::Result<Self> {
        Self::parse(&read("/proc/interrupts")?)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut lines = text.lines();
        let header = lines.next().context("empty /proc/interrupts")?;
        let cpus: Vec<u32> = header
            .split_whitespace()
            .map(|t| {
                t.strip_prefix("CPU")
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("unexpected /proc/interrupts header {header:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut rows = BTreeMap::new();
        for line in lines {
            let Some((name, rest)) = line.trim_start().split_once(':') else {
                continue;
            };
            let counts: BTreeMap<u32, u64> = cpus
                .iter()
                .zip(rest.split_whitespace().map_while(|t| t.parse::<u64>().ok()))
                .map(|(c, n)| (*c, n))
                .collect();
            rows.insert(name.to_owned(), counts);
        }
        Ok(Self { rows })
    }

    pub fn get(&self, row: &str, cpu: u32) -> u64 {
        self.rows
            .get(row)
            .and_then(|r| r.get(&cpu))
            .copied()
            .unwrap_or(0)
    }

    /// `later - self` for one row and CPU.
    pub fn delta(&self, later: &Self, row: &str, cpu: u32) -> u64 {
        later.get(row, cpu).saturating_sub(self.get(row, cpu))
    }
}

/// One CPU's line of /proc/stat, in `USER_HZ` ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    pub fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    pub fn read(cpu: u32) -> anyhow::Result<Self> {
        Self::parse(&read("/proc/stat")?, cpu)
    }

    pub fn parse(text: &str, cpu: u32) -> anyhow::Result<Self> {
        let tag = format!("cpu{cpu}");
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(tag.as_str()))
            .with_context(|| format!("no {tag} line in /proc/stat"))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map_while(|t| t.parse().ok())
            .collect();
        if v.len() < 8 {
            bail!("short /proc/stat line {line:?}");
        }
        Ok(Self {
            user: v[0],
            nice: v[1],
            system: v[2],
            idle: v[3],
            iowait: v[4],
            irq: v[5],
            softirq: v[6],
            steal: v[7],
        })
    }

    /// System share of the time between `self` and `later`, in percent.
    pub fn system_share(&self, later: &Self) -> Option<f64> {
        let total = later.total().checked_sub(self.total())?;
        let sys = later.system.checked_sub(self.system)?;
        (total > 0).then(|| sys as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIX_ONE: &str = "           CPU0       CPU1       CPU2       CPU3       \n  0:         33          0          0          0   IO-APIC   2-edge      timer\nNMI:          0          1          1          1   Non-maskable interrupts\nCAL:        191        406        241        222   Function call interrupts\n";
    const SEVEN_HOTPLUG: &str = "            CPU0       CPU1       CPU2\n NMI:          0          0          2  Non-maskable interrupts\n CAL:        248        382        207  Function call interrupts\n";

    #[test]
    fn interrupts_rows_and_offline_columns() {
        let i = Interrupts::parse(SIX_ONE).unwrap();
        assert_eq!(i.get("CAL", 3), 222);
        assert_eq!(i.get("NMI", 1), 1);
        assert_eq!(i.get("0", 0), 33);
        assert_eq!(i.get("TLB", 0), 0);
        let j = Interrupts::parse(SEVEN_HOTPLUG).unwrap();
        assert_eq!(j.get("CAL", 2), 207);
        assert_eq!(j.get("CAL", 3), 0, "CPU 3 offline: no column");
        assert!(Interrupts::parse("").is_err());
    }

    #[test]
    fn proc_stat() {
        let a = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu3 0 0 100 0 0 0 0 0 0 0\n";
        let b = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu3 1 0 398 1 0 0 0 0 0 0\n";
        let (a, b) = (
            CpuTimes::parse(a, 3).unwrap(),
            CpuTimes::parse(b, 3).unwrap(),
        );
        assert_eq!(a.system_share(&b), Some(298.0 * 100.0 / 300.0));
        assert!(CpuTimes::parse(SIX_ONE, 9).is_err());
    }
}
