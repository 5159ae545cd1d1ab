//! One daemon per pin dir: an exclusive `flock` on the bpffs pin directory itself. The lock
//! goes with the process (`kill -9` included) and needs no file beside the pins (bpffs holds
//! only pins); the holder's PID is read back from `/proc/locks`.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("cannot open pin dir {dir} to lock it")]
    Open {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another ctx-daemon ({holder}) already uses pin dir {dir}: stop it first, or give this \
         one its own --pin-dir"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock pin dir {dir}")]
    Lock {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for the daemon's life; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub struct PinDirLock {
    _dir: File,
}

/// Takes the lock on `dir` (which must exist), or says which process holds it.
pub fn lock(dir: &Path) -> Result<PinDirLock, LockError> {
    let f = File::open(dir).map_err(|source| LockError::Open {
        dir: dir.to_owned(),
        source,
    })?;
    // SAFETY: a valid open fd; flock does not touch memory.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(PinDirLock { _dir: f });
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(LockError::Lock {
            dir: dir.to_owned(),
            source: e,
        });
    }
    let holder = f
        .metadata()
        .ok()
        .and_then(|m| {
            let locks = std::fs::read_to_string("/proc/locks").ok()?;
            holder_pid(&locks, m.dev(), m.ino())
        })
        .map_or_else(|| "PID unknown".to_owned(), |p| format!("PID {p}"));
    Err(LockError::Held {
        dir: dir.to_owned(),
        holder,
    })
}

/// The PID holding a `FLOCK` on the inode `ino` of device `dev`, from `/proc/locks` lines such
/// as `1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF` (device numbers in hex).
fn holder_pid(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Blocked waiters show as "1: -> FLOCK ..."; skip them.
        if f.get(1) != Some(&"FLOCK") {
            return None;
        }
        let pid: u32 = f.get(4)?.parse().ok()?;
        let mut id = f.get(5)?.split(':');
        let ma = u32::from_str_radix(id.next()?, 16).ok()?;
        let mi = u32::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (ma == major && mi == minor && i == ino).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_holder_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 99 00:2a:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4321 00:2a:77 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 555 00:2a:77 0 EOF\n";
        let dev = libc::makedev(0, 0x2a);
        assert_eq!(holder_pid(locks, dev, 77), Some(4321));
        assert_eq!(holder_pid(locks, dev, 78), None);
    }

    #[test]
    fn second_lock_names_the_first_holder() {
        let dir = std::env::temp_dir().join(format!("ctx-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock(&dir).unwrap();
        // flock locks belong to the open file description: a second open conflicts even in the
        // same process.
        let e = lock(&dir).unwrap_err().to_string();
        assert!(e.contains(&format!("PID {}", std::process::id())), "{e}");
        drop(first);
        assert!(lock(&dir).is_ok());
        let _ = std::fs::remove_dir(&dir);
    }
}
