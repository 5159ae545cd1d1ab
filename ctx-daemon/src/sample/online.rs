//! The online CPU list, read at every sweep so that hotplug shows at once.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::host::cpuset::CpuSet;
use crate::host::system::SysRoot;

/// `/sys/devices/system/cpu/online`, kept open: a sysfs attribute regenerates its text on every
/// read from offset 0, so each refresh is one pread instead of open, fstat, read and close.
pub struct Online {
    file: Option<File>,
    sys: SysRoot,
    buf: Vec<u8>,
}

impl Online {
    pub fn open(sys: &SysRoot) -> Self {
        Self {
            file: File::open(sys.cpu_list_path("online")).ok(),
            sys: sys.clone(),
            buf: vec![0; 4096],
        }
    }

    /// The CPUs online now; `None` when the list cannot be read (the model keeps the last).
    pub fn read(&mut self) -> Option<CpuSet> {
        match &self.file {
            Some(f) => {
                let n = f.read_at(&mut self.buf, 0).ok()?;
                std::str::from_utf8(&self.buf[..n]).ok()?.parse().ok()
            }
            None => self.sys.online().ok(),
        }
    }
}
