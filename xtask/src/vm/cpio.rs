//! Initramfs archives: newc cpio (Documentation/driver-api/early-userspace/buffer-format.rst).
//! [`Newc`] writes one directly, so no staging tree, mknod or root privileges are needed, and
//! the archive is reproducible (every mtime is 0); [`pack`] archives a staged tree; [`concat`]
//! puts several into one initramfs.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A newc ("070701") archive writer.
pub struct Newc<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> Newc<W> {
    pub fn new(out: W) -> Self {
        Self { out, ino: 1 }
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        self.out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is over 4 GiB"))
        })?;
        let namesize = name.len() + 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: 6 + 13 * 8 = 110 bytes.
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.ino += 1;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(b"\0")?;
        self.pad(header.len() + namesize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Whether an ELF executable runs without a dynamic loader (no `PT_INTERP` program header).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    // 64-bit little-endian ELF only.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|o| u32_at(o + i * usize::from(phentsize)))
            .is_some_and(|t| t != PT_INTERP)
    })
}

/// Reads an executable that goes into an initramfs without a libc; `hint` says how to get a
/// static one.
pub fn read_static(path: &Path, hint: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !is_static_elf(&bytes) {
        bail!(
            "{} is not a static x86-64 executable; the initramfs has no libc: {hint}",
            path.display()
        );
    }
    Ok(bytes)
}

/// `find . | sort | cpio -o -H newc` of `dir` into `out`: a tree that holds what the writer
/// above cannot make (device nodes, hard links, owners) as the kernel unpacks it.
pub fn pack(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let status = Command::new("bash")
        .args([
            "-c",
            "set -eo pipefail; cd \"$1\" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | \
             cpio --null -o -H newc --reproducible --quiet",
            "pack",
        ])
        .arg(dir)
        .stdout(file)
        .status()
        .context("running find | cpio (install cpio)")?;
    if !status.success() {
        bail!("packing {} with cpio failed ({status})", dir.display());
    }
    Ok(())
}

/// Concatenates newc archives into one initramfs, each starting on a 4-byte boundary; the
/// kernel unpacks them in turn, later files over earlier ones.
pub fn concat(parts: &[&Path], out: &Path) -> anyhow::Result<()> {
    let mut f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut len = 0usize;
    for p in parts {
        let pad = (4 - len % 4) % 4;
        f.write_all(&[0u8; 3][..pad])?;
        let mut src = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let n = io::copy(&mut src, &mut f).with_context(|| format!("copying {}", p.display()))?;
        len += pad + usize::try_from(n).context("an archive beyond the address space")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev, data)
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// Reads a newc archive back.
    fn parse(mut b: &[u8]) -> Vec<Entry> {
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at offset {off}");
            let f = |i: usize| hex(&b[6 + i * 8..14 + i * 8]);
            let (mode, size, rdev, namesize) = (f(1), f(6) as usize, (f(9), f(10)), f(11) as usize);
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
            assert_eq!(b[110 + namesize - 1], 0);
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).div_ceil(4) * 4;
            off += next;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn newc_round_trip() {
        let mut a = Newc::new(Vec::new());
        a.dir("dev").unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.file("init", 0o755, b"#!x").unwrap();
        a.symlink("bin/sh", "/bin/busybox").unwrap();
        let bytes = a.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let e = parse(&bytes);
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].0, "dev");
        assert_eq!(e[0].1, S_IFDIR | 0o755);
        assert_eq!(e[1].2, (5, 1));
        assert_eq!(e[1].1, S_IFCHR | 0o600);
        assert_eq!(e[2].3, b"#!x");
        assert_eq!(e[3].3, b"/bin/busybox");
        assert_eq!(e[3].1, S_IFLNK | 0o777);
    }

    #[test]
    fn static_elf_detection() {
        let mut elf = vec![0u8; 0x100];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20] = 0x40; // phoff
        elf[0x36] = 0x38; // phentsize
        elf[0x38] = 2; // phnum
        elf[0x40] = 1; // PT_LOAD
        elf[0x78] = 1; // PT_LOAD
        assert!(is_static_elf(&elf));
        elf[0x78] = 3; // PT_INTERP
        assert!(!is_static_elf(&elf));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn concat_aligns_parts() {
        let d = std::env::temp_dir().join(format!("xtask-initrd-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let (a, b, out) = (d.join("a"), d.join("b"), d.join("out"));
        fs::write(&a, b"12345").unwrap();
        fs::write(&b, b"xy").unwrap();
        concat(&[&a, &b, &a], &out).unwrap();
        assert_eq!(
            fs::read(&out).unwrap(),
            [&b"12345\0\0\0xy\0\0"[..], b"12345"].concat()
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
