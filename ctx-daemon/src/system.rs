//! Facts about the machine, read from procfs and sysfs. Nothing here sends an IPI: these files
//! are served from kernel data without asking other CPUs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::{fmt, fs, io};

use thiserror::Error;

/// A set of CPU ids, in the kernel's list format (`0-3,8,10-11`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSet(BTreeSet<u32>);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid CPU list {input:?}: {reason} (expected a list such as 0-3,8)")]
pub struct CpuListError {
    pub input: String,
    pub reason: &'static str,
}

impl CpuSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    pub fn insert(&mut self, cpu: u32) {
        self.0.insert(cpu);
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn max(&self) -> Option<u32> {
        self.0.last().copied()
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        CpuSet(iter.into_iter().collect())
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CpuListError {
            input: s.to_owned(),
            reason,
        };
        let mut set = BTreeSet::new();
        for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let lo: u32 = lo.trim().parse().map_err(|_| err("not a number"))?;
            let hi: u32 = hi.trim().parse().map_err(|_| err("not a number"))?;
            if lo > hi {
                return Err(err("range runs backwards"));
            }
            if hi >= ctx_common::record::MAX_CPUS as u32 {
                return Err(err("CPU id beyond 8191"));
            }
            set.extend(lo..=hi);
        }
        Ok(CpuSet(set))
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.0.iter().copied().peekable();
        while let Some(lo) = it.next() {
            let mut hi = lo;
            while it.peek() == Some(&(hi + 1)) {
                hi += 1;
                it.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
#[error("reading {path}: {source}")]
pub struct SysReadError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Where procfs and sysfs are; tests point it at a fixture tree.
#[derive(Clone, Debug)]
pub struct SysRoot {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

impl Default for SysRoot {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
        }
    }
}

impl SysRoot {
    fn read(&self, path: PathBuf) -> Result<String, SysReadError> {
        fs::read_to_string(&path).map_err(|source| SysReadError { path, source })
    }

    fn cpu_list(&self, name: &str) -> Result<CpuSet, SysReadError> {
        let path = self.sys.join("devices/system/cpu").join(name);
        let text = self.read(path.clone())?;
        text.parse().map_err(|e: CpuListError| SysReadError {
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
    }

    /// CPUs online now.
    pub fn online(&self) -> Result<CpuSet, SysReadError> {
        self.cpu_list("online")
    }

    /// CPUs that can ever exist; per-CPU maps have one slot for each.
    pub fn possible(&self) -> Result<CpuSet, SysReadError> {
        self.cpu_list("possible")
    }

    /// `nohz_full=` CPUs; empty when the kernel lacks NO_HZ_FULL or the boot set none.
    pub fn nohz_full(&self) -> CpuSet {
        self.cpu_list("nohz_full").unwrap_or_default()
    }

    /// `isolcpus=` domain-isolated CPUs.
    pub fn isolated(&self) -> CpuSet {
        self.cpu_list("isolated").unwrap_or_default()
    }

    pub fn kernel_release(&self) -> String {
        self.read(self.proc.join("sys/kernel/osrelease"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    }

    pub fn hostname(&self) -> String {
        self.read(self.proc.join("sys/kernel/hostname"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    }

    pub fn btf_path(&self) -> PathBuf {
        self.sys.join("kernel/btf/vmlinux")
    }

    /// Effective capabilities of this process (CapEff in /proc/self/status).
    pub fn effective_caps(&self) -> Result<u64, SysReadError> {
        let path = self.proc.join("self/status");
        let text = self.read(path.clone())?;
        text.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| SysReadError {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "no CapEff line"),
            })
    }

    /// NMIs per CPU from the `NMI:` row of /proc/interrupts (x86), for cross-checks.
    pub fn interrupts_row(&self, row: &str) -> Option<Vec<u64>> {
        let text = self.read(self.proc.join("interrupts")).ok()?;
        parse_interrupts_row(&text, row)
    }
}

/// The online-CPU list, kept open: a sysfs attribute regenerates its text on every read from
/// offset 0, so each refresh is one pread instead of open, fstat, read and close.
pub struct OnlineWatch {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl OnlineWatch {
    pub fn open(sys: &SysRoot) -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open(sys.sys.join("devices/system/cpu/online"))?,
            buf: vec![0; 4096],
        })
    }

    pub fn read(&mut self) -> Option<CpuSet> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(&mut self.buf, 0).ok()?;
        std::str::from_utf8(&self.buf[..n]).ok()?.parse().ok()
    }
}

/// Parses one row (e.g. `NMI`, `CAL`) of /proc/interrupts into per-column counts.
pub fn parse_interrupts_row(text: &str, row: &str) -> Option<Vec<u64>> {
    let mut lines = text.lines();
    let ncpu = lines.next()?.split_whitespace().count();
    let prefix = format!("{row}:");
    let line = lines.find(|l| l.trim_start().starts_with(&prefix))?;
    let rest = line.trim_start().strip_prefix(&prefix)?;
    let counts: Vec<u64> = rest
        .split_whitespace()
        .take(ncpu)
        .map_while(|t| t.parse().ok())
        .collect();
    (counts.len() == ncpu).then_some(counts)
}

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What loading and attaching tracing programs needs: CAP_BPF with CAP_PERFMON (5.8+), or
/// CAP_SYS_ADMIN, which implies both.
pub fn missing_caps(eff: u64) -> Vec<&'static str> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut m = Vec::new();
    if !has(CAP_BPF) {
        m.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        m.push("CAP_PERFMON");
    }
    m
}

/// Keeps khugepaged off this process's memory. Debian builds THP "always", and khugepaged
/// collapses even a sparse 2 MiB range (max_ptes_none is 511); every collapse ends in
/// tlb_remove_table_sync_one(), an IPI to every CPU, the nohz_full ones ctx watches included.
/// Children inherit the setting, and execve keeps it.
pub fn exclude_from_thp() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Hands memory freed after start-up (kernel BTF is parsed once, tens of MiB) back to the
/// system; glibc keeps it otherwise. musl returns freed memory on its own.
pub fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn mono_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns.
pub fn realtime_now_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Whether `path` is on a filesystem with magic `magic` (statfs).
pub fn fs_magic_is(path: &Path, magic: i64) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == magic
}

pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        for s in ["0", "0-3", "0-3,8,10-11", ""] {
            let set: CpuSet = s.parse().unwrap();
            assert_eq!(set.to_string(), s);
        }
        let set: CpuSet = "1-3\n".parse().unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!("3-1".parse::<CpuSet>().is_err());
        assert!("x".parse::<CpuSet>().is_err());
        assert!("0-9000".parse::<CpuSet>().is_err());
    }

    #[test]
    fn interrupts_rows() {
        let text = "           CPU0       CPU1       \n  0:         33          0   IO-APIC   2-edge      timer\nNMI:          5          7   Non-maskable interrupts\nCAL:       1234         99   Function call interrupts\n";
        assert_eq!(parse_interrupts_row(text, "NMI"), Some(vec![5, 7]));
        assert_eq!(parse_interrupts_row(text, "CAL"), Some(vec![1234, 99]));
        assert_eq!(parse_interrupts_row(text, "TLB"), None);
    }

    #[test]
    fn caps() {
        assert!(missing_caps(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_caps(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }
}
