//! Facts about the machine, read from procfs and sysfs, and the process-wide settings ctx makes
//! (THP, clocks, memory). Nothing here sends an IPI: these files are served from kernel data
//! without asking other CPUs.

use std::path::{Path, PathBuf};
use std::{fs, io};

use thiserror::Error;

use crate::host::cpuset::{CpuListError, CpuSet};

/// A procfs or sysfs file that could not be used.
#[derive(Debug, Error)]
pub enum SysReadError {
    #[error("cannot read {path} (ctx needs procfs on /proc and sysfs on /sys)")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no CPU list ctx can read (a kernel format ctx does not know?)")]
    CpuList {
        path: PathBuf,
        #[source]
        source: CpuListError,
    },
    #[error("{path} has no {field} line (a kernel format ctx does not know?)")]
    Field { path: PathBuf, field: &'static str },
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
    fn read(path: PathBuf) -> Result<String, SysReadError> {
        fs::read_to_string(&path).map_err(|source| SysReadError::Io { path, source })
    }

    /// A file of `/sys/devices/system/cpu` (`online`, `possible`, `nohz_full`, ...).
    pub fn cpu_list_path(&self, name: &str) -> PathBuf {
        self.sys.join("devices/system/cpu").join(name)
    }

    fn cpu_list(&self, name: &str) -> Result<CpuSet, SysReadError> {
        let path = self.cpu_list_path(name);
        let text = Self::read(path.clone())?;
        text.parse()
            .map_err(|source| SysReadError::CpuList { path, source })
    }

    /// CPUs online now.
    pub fn online(&self) -> Result<CpuSet, SysReadError> {
        self.cpu_list("online")
    }

    /// CPUs that can ever exist; per-CPU maps have one slot for each.
    pub fn possible(&self) -> Result<CpuSet, SysReadError> {
        self.cpu_list("possible")
    }

    /// `nohz_full=` CPUs; empty when the kernel lacks `NO_HZ_FULL` or the boot set none.
    pub fn nohz_full(&self) -> CpuSet {
        self.cpu_list("nohz_full").unwrap_or_default()
    }

    /// `isolcpus=` domain-isolated CPUs.
    pub fn isolated(&self) -> CpuSet {
        self.cpu_list("isolated").unwrap_or_default()
    }

    pub fn kernel_release(&self) -> String {
        Self::read(self.proc.join("sys/kernel/osrelease"))
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
    }

    pub fn hostname(&self) -> String {
        Self::read(self.proc.join("sys/kernel/hostname"))
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
    }

    pub fn btf_path(&self) -> PathBuf {
        self.sys.join("kernel/btf/vmlinux")
    }

    /// Effective capabilities of this process (`CapEff` in /proc/self/status).
    pub fn effective_caps(&self) -> Result<u64, SysReadError> {
        let path = self.proc.join("self/status");
        let text = Self::read(path.clone())?;
        text.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or(SysReadError::Field {
                path,
                field: "CapEff:",
            })
    }
}

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What loading and attaching tracing programs needs: `CAP_BPF` with `CAP_PERFMON` (5.8+), or
/// `CAP_SYS_ADMIN`, which implies both.
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
/// collapses even a sparse 2 MiB range (`max_ptes_none` is 511); every collapse ends in
/// `tlb_remove_table_sync_one()`, an IPI to every CPU, the `nohz_full` ones ctx watches included.
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
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    // Both clocks read after the epoch and boot: never negative.
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
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

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
pub fn mono_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME` in ns.
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
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    rc == 0 && st.f_type as i64 == magic
}

pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `fd` is a terminal (colour, the full-screen view).
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty has no memory-safety preconditions.
    unsafe { libc::isatty(fd) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::printed_once;

    #[test]
    fn caps() {
        assert!(missing_caps(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_caps(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn read_errors_name_the_file_and_print_each_cause_once() {
        let root = std::env::temp_dir().join(format!("ctx-sysroot-{}", std::process::id()));
        let cpu = root.join("sys/devices/system/cpu");
        fs::create_dir_all(&cpu).unwrap();
        fs::write(cpu.join("possible"), "0-x\n").unwrap();
        fs::create_dir_all(root.join("proc/self")).unwrap();
        fs::write(root.join("proc/self/status"), "Name: ctx\n").unwrap();
        let sys = SysRoot {
            sys: root.join("sys"),
            proc: root.join("proc"),
        };
        let missing = sys.online().unwrap_err();
        let bad = sys.possible().unwrap_err();
        let no_field = sys.effective_caps().unwrap_err();
        fs::remove_dir_all(&root).unwrap();
        let missing = printed_once(missing);
        assert!(
            missing.contains("cpu/online") && missing.contains("No such file"),
            "{missing}"
        );
        let bad = printed_once(bad);
        assert!(bad.contains("cpu/possible") && bad.contains("0-x"), "{bad}");
        let no_field = printed_once(no_field);
        assert!(no_field.contains("CapEff"), "{no_field}");
    }
}
