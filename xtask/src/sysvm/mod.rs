//! The real-systemd VM test (issue 6): ctx installed the way a user installs it, in a Debian
//! rootfs booted with systemd as PID 1 on a nohz_full kernel.
//!
//! The initramfs is three newc archives back to back, which the kernel unpacks in turn:
//! 1. the cached Debian rootfs (`rootfs.rs`), the same for every kernel;
//! 2. an overlay with ctx staged by `cargo xtask install --destdir` (`install.rs`), and the
//!    guest check `ctx-sysvm-check` with its service, enabled;
//! 3. the kernel's virtio-net modules with their `depmod` output, cached per kernel release.
//!
//! The guest speaks `ctx_sysvm_guest::proto` on ttyS0. qemu's user network forwards a host
//! loopback port to ctx's 10977 and another to the guest's poke port, so the host can scrape
//! ctx (`live.rs`: Prometheus, recording rules, dashboard queries) while the guest holds its
//! live window open, and then tell it to go on.
//!
//! `cargo xtask vm-test` (`vm/systemd.rs`) puts these together: [`overlay`], [`kernel_modules`]
//! (called by the harness's kernel download while the packages are at hand), [`initrd`],
//! [`qemu_command`], `ctx_sysvm_guest::proto::Transcript` for the console, [`live::check`]
//! and [`live::quick`] for the host side of the live window.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use ctx_sysvm_guest::proto::{LIVE_PARAM, METRICS_PORT, POKE_PORT};

use crate::{install, rootfs};

pub mod live;

/// The kernel command line: the harness's (nohz_full under test, `tsc=nowatchdog` against the
/// clocksource watchdog's IPIs under TCG, warnings on the console, reboot on panic, which
/// `-no-reboot` turns into qemu exiting), and systemd's status output limited to errors.
pub const CMDLINE: &str = "console=ttyS0 nohz_full=1-3 rcu_nocbs=1-3 tsc=nowatchdog loglevel=5 \
                           panic=-1 systemd.show_status=error";

/// Where ctx-sysvm-check goes in the image, and its unit.
const CHECK_BIN: &str = "usr/local/sbin/ctx-sysvm-check";
const CHECK_UNIT: &str = "ctx-sysvm-check.service";
const CHECK_UNIT_TEXT: &str = "\
[Unit]
Description=ctx systemd VM test: checks ctx under systemd, prints one verdict on ttyS0, powers off
After=basic.target network.target

[Service]
# exec, not oneshot: the check waits for the boot to finish, which must not wait for it.
Type=exec
ExecStart=/usr/local/sbin/ctx-sysvm-check
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYReset=no
TTYVHangup=no

[Install]
WantedBy=multi-user.target
";

/// Modules virtio-net needs on Debian's cloud kernels; those built in are absent from the
/// package and skipped (6.12 and 7.x build virtio and virtio-pci in, 6.1 does not).
const NET_MODULES: [&str; 8] = [
    "virtio_net",
    "net_failover",
    "failover",
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
];

/// The static musl programs that go into the guest (built by the harness's
/// `vm::artifacts::build`).
pub struct GuestBins {
    pub ctx: install::Binaries,
    pub check: PathBuf,
}

fn put(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Archive 2: ctx installed under prefix /usr exactly as `cargo xtask install --destdir` does,
/// plus the check and its enabled unit. Written to `work/overlay.cpio`.
pub fn overlay(root: &Path, work: &Path, bins: &GuestBins) -> anyhow::Result<PathBuf> {
    let stage = work.join("overlay");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let items = install::plan(root, Path::new("/usr"), &bins.ctx)?;
    install::apply(&items, Some(&stage))?;
    let check =
        fs::read(&bins.check).with_context(|| format!("reading {}", bins.check.display()))?;
    put(&stage.join(CHECK_BIN), &check, 0o755)?;
    let units = stage.join("etc/systemd/system");
    put(&units.join(CHECK_UNIT), CHECK_UNIT_TEXT.as_bytes(), 0o644)?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants).with_context(|| format!("creating {}", wants.display()))?;
    std::os::unix::fs::symlink(
        format!("/etc/systemd/system/{CHECK_UNIT}"),
        wants.join(CHECK_UNIT),
    )
    .context("enabling the check unit")?;
    // Every directory of the overlay also exists in the rootfs, and the kernel applies the
    // overlay's mode to it: keep them all 0755.
    for e in walk(&stage)? {
        if e.is_dir() {
            fs::set_permissions(&e, fs::Permissions::from_mode(0o755))?;
        }
    }
    let out = work.join("overlay.cpio");
    rootfs::pack(&stage, &out)?;
    Ok(out)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p)?);
        }
        out.push(p);
    }
    Ok(out)
}

/// What the names of the module archives start with.
pub const MODULES_ARCHIVE_PREFIX: &str = "modules-";

/// Where [`kernel_modules`] caches the archive of `release` in `cache`:
/// `modules-RELEASE-KEY.cpio`, KEY covering the module list.
pub fn modules_archive(cache: &Path, release: &str) -> PathBuf {
    let key = rootfs::fnv1a(&NET_MODULES.join(","));
    cache.join(format!("{MODULES_ARCHIVE_PREFIX}{release}-{key:016x}.cpio"))
}

/// Archive 3, for one kernel: its virtio-net modules under `usr/lib/modules/RELEASE` with the
/// `modules.*` indexes that udev's coldplug needs, cached as [`modules_archive`].
/// `debs` are the kernel's packages (the image, and from 7.x `linux-modules-RELEASE`). Needs
/// `depmod` (Debian package kmod).
pub fn kernel_modules(debs: &[PathBuf], release: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let out = modules_archive(cache, release);
    if out.exists() {
        return Ok(out);
    }
    let work = cache.join(format!("modules-{release}.build.{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let r = (|| {
        let x = work.join("x");
        fs::create_dir_all(&x).with_context(|| format!("creating {}", x.display()))?;
        for d in debs {
            let s = Command::new("dpkg-deb")
                .arg("-x")
                .arg(d)
                .arg(&x)
                .status()
                .context("running dpkg-deb")?;
            if !s.success() {
                bail!("dpkg-deb -x {} failed ({s})", d.display());
            }
        }
        let src = ["usr/lib/modules", "lib/modules"]
            .iter()
            .map(|m| x.join(m).join(release))
            .find(|p| p.join("modules.order").exists())
            .with_context(|| {
                format!(
                    "no lib/modules/{release}/modules.order in {:?}: from 7.x the modules are in \
                     linux-modules-{release}",
                    debs
                )
            })?;
        // depmod -b wants BASE/lib/modules; the image is merged-/usr, so the tree moves to
        // usr/lib/modules before packing (a "lib" directory would collide with /lib -> usr/lib).
        let stage = work.join("stage");
        let dst = stage.join("lib/modules").join(release);
        fs::create_dir_all(&dst)?;
        for f in [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            if src.join(f).exists() {
                fs::copy(src.join(f), dst.join(f)).with_context(|| format!("copying {f}"))?;
            }
        }
        let builtin = fs::read_to_string(src.join("modules.builtin")).unwrap_or_default();
        let mut took = Vec::new();
        for m in NET_MODULES {
            let is_builtin = builtin
                .lines()
                .any(|l| l.rsplit('/').next().is_some_and(|f| f == format!("{m}.ko")));
            if is_builtin {
                continue;
            }
            let found = walk(&src.join("kernel"))?.into_iter().find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n == format!("{m}.ko") || n.starts_with(&format!("{m}.ko."))
                })
            });
            let Some(p) = found else {
                bail!("{release} has {m} neither built in nor as a module: virtio-net cannot work");
            };
            let rel = p.strip_prefix(&src)?;
            let to = dst.join(rel);
            fs::create_dir_all(to.parent().context("module without a directory")?)?;
            fs::copy(&p, &to).with_context(|| format!("copying {}", p.display()))?;
            took.push(m);
        }
        let s = Command::new("depmod")
            .arg("-b")
            .arg(&stage)
            .arg(release)
            .status()
            .context("running depmod (apt-get install kmod)")?;
        if !s.success() {
            bail!("depmod -b {} {release} failed ({s})", stage.display());
        }
        // Every dependency depmod found must have come along.
        let dep = fs::read_to_string(dst.join("modules.dep")).context("reading modules.dep")?;
        for line in dep.lines() {
            for d in line.split_whitespace().skip(1) {
                if !dst.join(d).exists() {
                    bail!("{d}, needed by {line:?}, is missing from the staged modules");
                }
            }
        }
        if !builtin.contains("virtio_net.ko") && !dep.contains("virtio_net.ko") {
            bail!("depmod did not index virtio_net");
        }
        eprintln!(
            "sysvm: {release}: modules {}",
            if took.is_empty() {
                "none needed".to_owned()
            } else {
                took.join(", ")
            }
        );
        fs::create_dir_all(stage.join("usr"))?;
        fs::rename(stage.join("lib"), stage.join("usr/lib")).context("moving lib to usr/lib")?;
        for e in walk(&stage)? {
            if e.is_dir() {
                fs::set_permissions(&e, fs::Permissions::from_mode(0o755))?;
            }
        }
        let part = out.with_extension("cpio.part");
        rootfs::pack(&stage, &part)?;
        fs::rename(&part, &out).with_context(|| format!("renaming to {}", out.display()))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&work);
    r.map(|()| out)
}

/// Concatenates newc archives into one initramfs, each starting on a 4-byte boundary.
pub fn initrd(parts: &[&Path], out: &Path) -> anyhow::Result<()> {
    let mut f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut len = 0u64;
    for p in parts {
        let pad = (4 - len % 4) % 4;
        f.write_all(&[0u8; 3][..pad as usize])?;
        let mut src = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        len += pad
            + std::io::copy(&mut src, &mut f)
                .with_context(|| format!("copying {}", p.display()))?;
    }
    Ok(())
}

/// Host loopback ports forwarded into the guest.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// To ctx's /metrics and /healthz (guest port 10977).
    pub metrics: u16,
    /// To the guest's poke listener (guest port 10978).
    pub poke: u16,
}

impl Forward {
    /// Two free loopback ports (free when asked; qemu binds them a moment later).
    pub fn free() -> anyhow::Result<Self> {
        let port = || -> anyhow::Result<(std::net::TcpListener, u16)> {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
            let p = l.local_addr()?.port();
            Ok((l, p))
        };
        let (a, metrics) = port()?;
        let (b, poke) = port()?;
        drop((a, b));
        Ok(Self { metrics, poke })
    }

    pub fn metrics_addr(&self) -> String {
        format!("127.0.0.1:{}", self.metrics)
    }

    pub fn poke_addr(&self) -> String {
        format!("127.0.0.1:{}", self.poke)
    }
}

/// The qemu invocation: TCG with `thread=single` (multi-threaded TCG hangs on the text
/// patching of attaching), 4 CPUs, 2 GiB (the rootfs lives in RAM), user networking with the
/// two forwards over virtio-net. `live` holds the guest's live window open for that many
/// seconds at most.
pub fn qemu_command(vmlinuz: &Path, initrd: &Path, fwd: Forward, live: Option<u64>) -> Command {
    let mut cmdline = CMDLINE.to_owned();
    if let Some(s) = live {
        cmdline.push_str(&format!(" {LIVE_PARAM}={s}"));
    }
    let mut c = crate::vm::qemu::machine(2048);
    c.arg("-netdev").arg(format!(
        "user,id=n,hostfwd=tcp:127.0.0.1:{}-:{METRICS_PORT},hostfwd=tcp:127.0.0.1:{}-:{POKE_PORT}",
        fwd.metrics, fwd.poke
    ))
    .args(["-device", "virtio-net-pci,netdev=n"])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", &cmdline])
    .stdin(Stdio::null());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_aligns_parts() {
        let d = std::env::temp_dir().join(format!("xtask-initrd-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let (a, b, out) = (d.join("a"), d.join("b"), d.join("out"));
        fs::write(&a, b"12345").unwrap();
        fs::write(&b, b"xy").unwrap();
        initrd(&[&a, &b, &a], &out).unwrap();
        assert_eq!(
            fs::read(&out).unwrap(),
            [&b"12345\0\0\0xy\0\0"[..], b"12345"].concat()
        );
        fs::remove_dir_all(&d).unwrap();
    }

    /// The overlay is what `cargo xtask install --destdir` stages, plus the enabled check, with
    /// nothing that would collide with the rootfs' merged-/usr symlinks.
    #[test]
    fn overlay_holds_the_install_and_the_check() {
        let d = std::env::temp_dir().join(format!("xtask-overlay-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let bins = GuestBins {
            ctx: install::Binaries {
                ctx_daemon: d.join("ctx-daemon"),
                ctxtop: d.join("ctxtop"),
            },
            check: d.join("check"),
        };
        for p in [&bins.ctx.ctx_daemon, &bins.ctx.ctxtop, &bins.check] {
            fs::write(p, "x").unwrap();
        }
        let cpio = overlay(&install::workspace_root(), &d, &bins).unwrap();
        let list = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(fs::File::open(&cpio).unwrap())
            .output()
            .unwrap();
        assert!(list.status.success());
        let list = String::from_utf8(list.stdout).unwrap();
        let entry = |path: &str| {
            list.lines()
                .find(|l| l.split_whitespace().nth(8) == Some(path))
                .unwrap_or_else(|| panic!("{path} not in the overlay:\n{list}"))
                .to_owned()
        };
        for (path, mode) in [
            ("usr/bin/ctx-daemon", "-rwxr-xr-x"),
            ("usr/bin/ctxtop", "-rwxr-xr-x"),
            ("usr/lib/systemd/system/ctx.service", "-rw-r--r--"),
            ("usr/lib/sysusers.d/ctx.conf", "-rw-r--r--"),
            ("etc/ctx/ctx.toml", "-rw-r--r--"),
            ("usr/share/doc/ctx/deploy/README.md", "-rw-r--r--"),
            ("usr/local/sbin/ctx-sysvm-check", "-rwxr-xr-x"),
            ("etc/systemd/system/ctx-sysvm-check.service", "-rw-r--r--"),
            ("etc", "drwxr-xr-x"),
            ("usr/local/sbin", "drwxr-xr-x"),
        ] {
            assert!(entry(path).starts_with(mode), "{}", entry(path));
        }
        assert!(
            entry("etc/systemd/system/multi-user.target.wants/ctx-sysvm-check.service")
                .ends_with("-> /etc/systemd/system/ctx-sysvm-check.service")
        );
        for l in list.lines() {
            let p = l.split_whitespace().nth(8).unwrap_or("");
            assert!(
                p.starts_with("usr") || p.starts_with("etc"),
                "{p}: only usr/ and etc/ may be in the overlay (bin, lib are symlinks in the rootfs)"
            );
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn qemu_forwards_and_cmdline() {
        let c = qemu_command(
            Path::new("/k"),
            Path::new("/i"),
            Forward {
                metrics: 4000,
                poke: 4001,
            },
            Some(90),
        );
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"tcg,thread=single".to_owned()));
        assert!(
            args.contains(
                &"user,id=n,hostfwd=tcp:127.0.0.1:4000-:10977,hostfwd=tcp:127.0.0.1:4001-:10978"
                    .to_owned()
            )
        );
        let append = args.last().unwrap();
        assert!(append.contains("nohz_full=1-3 rcu_nocbs=1-3"));
        assert!(append.ends_with(" ctx.sysvm.live=90"));
    }
}
