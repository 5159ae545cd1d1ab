//! The systemd suite of `cargo xtask vm-test` (issue 6): each kernel boots a Debian rootfs with
//! systemd as PID 1 and ctx installed as `cargo xtask install` installs it, and
//! `ctx-sysvm-check`, a service of the image, proves the unit's promises from inside. While the
//! guest holds its live window open, the host scrapes ctx through qemu's port forward: on the
//! first kernel of the run with `nohz_full` CPUs with Debian's Prometheus, the shipped rules and
//! every dashboard query ([`live::check`]), on the others with one scrape ([`live::quick`]).
//!
//! The initramfs is three newc archives back to back, which the kernel unpacks in turn:
//! 1. the cached Debian rootfs ([`rootfs`]), the same for every kernel;
//! 2. an overlay with ctx staged by `cargo xtask install --destdir` (`install.rs`), and the
//!    guest check `ctx-sysvm-check` with its service, enabled;
//! 3. the kernel's virtio-net modules with their `depmod` output ([`modules`]), cached per
//!    kernel release.
//!
//! The console goes through the shared runner and transcript (`vm::transcript`): the same
//! kernel-trouble classifier, timeout, power-off grace and checks as the initramfs suite.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::Context as _;
use ctx_vm_proto::Line;
use ctx_vm_proto::suite::{SYSTEMD, live as guest_live};

use crate::install;
use crate::vm::artifacts::Binaries;
use crate::vm::cpio;
use crate::vm::kernel::Kernel;
use crate::vm::qemu::Boot;
use crate::vm::report::HostRow;
use crate::vm::transcript::{self, Outcome};

pub mod live;
pub mod modules;
pub mod rootfs;

use live::{Forward, LiveReport};
use rootfs::Rootfs;

/// How long the guest holds its live window open when the host says nothing.
const LIVE_HOLD: u64 = 300;
/// Seconds of 1 s scrapes before the rules and the dashboard queries are checked: enough for
/// the `rate()`s over 15 s windows in the rules and the dashboard to have two points.
const LIVE_SETTLE: Duration = Duration::from_secs(30);

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
fn overlay(root: &Path, work: &Path, bins: &Binaries) -> anyhow::Result<PathBuf> {
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
    cpio::pack(&stage, &out)?;
    Ok(out)
}

pub(crate) fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
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

/// What every kernel of the suite boots with: the Debian rootfs and the overlay with ctx.
pub struct Image {
    pub rootfs: Rootfs,
    pub overlay: PathBuf,
}

/// Builds (or finds cached) the rootfs, and writes the overlay into `work`.
pub fn image(cache: &Path, root: &Path, work: &Path, bins: &Binaries) -> anyhow::Result<Image> {
    let rootfs = rootfs::build(cache)?;
    let overlay = overlay(root, work, bins)?;
    Ok(Image { rootfs, overlay })
}

/// What the host did in the guest's live window.
#[derive(Debug)]
pub enum Live {
    /// Prometheus, the rules and the dashboard.
    Full(LiveReport),
    /// One scrape of /metrics and /healthz through the forward.
    Quick(String),
}

/// The host's side of the live window, run on its own thread while the console is read:
/// checks ctx through the forward, then tells the guest to go on, whatever the check found.
fn host_side(
    root: &Path,
    work: &Path,
    fwd: Forward,
    prometheus: bool,
    gone: &AtomicBool,
) -> anyhow::Result<Live> {
    let r = if prometheus {
        live::check(root, work, fwd, LIVE_SETTLE, gone).map(Live::Full)
    } else {
        live::quick(fwd).map(Live::Quick)
    };
    let poked = live::poke(fwd);
    let live = r?;
    poked?;
    Ok(live)
}

/// Boots `k` with the systemd image, reads the console and serves the live window.
/// `prometheus`: the full live check (else one scrape). Console log and initrd go to `work`;
/// the initrd is removed again when the run passed. Returns the outcome, what the host did in
/// the live window, and the failures.
pub fn boot(
    root: &Path,
    work: &Path,
    k: &Kernel,
    image: &Image,
    prometheus: bool,
    timeout: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Outcome, Option<Live>, Vec<String>)> {
    let name = k.spec.name;
    let modules = k
        .extra
        .as_deref()
        .with_context(|| format!("the {name} kernel was fetched without its modules archive"))?;
    let initrd = work.join(format!("{name}-systemd-initrd.img"));
    cpio::concat(&[&image.rootfs.cpio, &image.overlay, modules], &initrd)?;
    let bytes = fs::metadata(&initrd)
        .with_context(|| format!("reading {}", initrd.display()))?
        .len();
    progress(&format!(
        "initramfs {} MiB: rootfs, overlay with ctx, {} modules",
        bytes >> 20,
        k.release
    ));
    let log = work.join(format!("{name}-systemd-console.log"));
    let fwd = Forward::free()?;
    let boot = command(k, &initrd, fwd, LIVE_HOLD);
    progress(&format!("booting {} with {}", k.release, boot.cmdline()));
    let gone = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut host = None;
    let o = transcript::boot(&mut boot.command(), &log, timeout, progress, &mut |line| {
        if let Line::Live(secs) = line
            && host.is_none()
        {
            progress(&format!(
                "live window open (up to {secs} s): {}",
                if prometheus {
                    "Prometheus, rules and dashboard queries on the host"
                } else {
                    "one scrape from the host"
                }
            ));
            let (root, work, tx, gone) =
                (root.to_owned(), work.to_owned(), tx.clone(), gone.clone());
            host = Some(std::thread::spawn(move || {
                let _ = tx.send(host_side(&root, &work, fwd, prometheus, &gone));
            }));
        }
    });
    // Whatever happened to qemu, the host side must end before the next boot.
    gone.store(true, Ordering::Relaxed);
    if let Some(h) = host {
        let _ = h.join();
    }
    let mut o = o?;
    let live = match rx.try_recv() {
        Ok(Ok(live)) => Some(live),
        Ok(Err(e)) => {
            o.problems
                .push(format!("host side of the live window: {e:#}"));
            None
        }
        Err(_) => None,
    };
    let failures = evaluate(k, &o, live.as_ref());
    if failures.is_empty() {
        // ~95 MiB each, and its parts stay cached.
        let _ = fs::remove_file(&initrd);
    }
    Ok((o, live, failures))
}

/// The qemu machine of the suite: 2 GiB (the rootfs lives in RAM), user networking with the two
/// forwards over virtio-net. `live` holds the guest's live window open for that many seconds
/// at most. `loglevel=5`: warnings and worse on the console, where the runner sees them;
/// `systemd.show_status=error`: systemd's status output limited to errors.
fn command(k: &Kernel, initrd: &Path, fwd: Forward, live: u64) -> Boot {
    let mut b = Boot::new(k, initrd, 2048).params([
        "loglevel=5",
        "systemd.show_status=error",
        &format!("{}={live}", guest_live::PARAM),
    ]);
    b.args.extend([
        "-netdev".to_owned(),
        format!(
            "user,id=n,hostfwd=tcp:127.0.0.1:{}-:{},hostfwd=tcp:127.0.0.1:{}-:{}",
            fwd.metrics,
            guest_live::METRICS_PORT,
            fwd.poke,
            guest_live::POKE_PORT
        ),
        "-device".to_owned(),
        "virtio-net-pci,netdev=n".to_owned(),
    ]);
    b
}

/// Everything that fails this kernel's systemd run. Empty means pass.
fn evaluate(k: &Kernel, o: &Outcome, live: Option<&Live>) -> Vec<String> {
    let mut f = o.failures(&SYSTEMD, &k.release);
    if o.transcript.live.is_none() {
        f.push("the guest never opened its live window".into());
    } else if live.is_none() && !o.problems.iter().any(|p| p.starts_with("host side")) {
        f.push("the host side of the live window never finished".into());
    }
    if let Some(Live::Full(r)) = live {
        f.extend(r.failures());
    }
    f
}

/// The live window's rows for the table: what the host measured through the forward.
pub fn host_rows(live: &Live) -> Vec<HostRow> {
    match live {
        Live::Quick(s) => vec![(
            "scrape through the forward".into(),
            s.clone(),
            "HTTP 200".into(),
            true,
        )],
        Live::Full(r) => r.rows(),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::vm::report;
    use crate::vm::transcript::fixture;

    fn passing() -> Outcome {
        let mut transcript = fixture::passing(&SYSTEMD);
        transcript.live = Some(LIVE_HOLD);
        Outcome {
            transcript,
            ..Default::default()
        }
    }

    #[test]
    fn evaluate_passes_a_clean_run_and_tables_it() {
        let k = Kernel::fixture();
        let o = passing();
        let live = Live::Quick("200".into());
        assert_eq!(evaluate(&k, &o, Some(&live)), Vec::<String>::new());
        let t = report::table(&SYSTEMD, &k, &o, &host_rows(&live), &[]);
        assert!(
            t.contains("== trixie systemd: kernel 6.12.117+deb13-cloud-amd64"),
            "{t}"
        );
        assert!(
            t.contains("PASS") && t.contains("scrape through the forward"),
            "{t}"
        );
        for (_, n) in SYSTEMD.checks {
            assert!(t.contains(n), "{n}: {t}");
        }
    }

    #[test]
    fn evaluate_fails_on_the_live_window() {
        let k = Kernel::fixture();
        // The runner's findings come first.
        let mut o = passing();
        o.problems.push("RCU stall: rcu: INFO: ...".into());
        o.transcript.live = None;
        assert_eq!(
            evaluate(&k, &o, None),
            vec![
                "RCU stall: rcu: INFO: ...",
                "the guest never opened its live window"
            ]
        );
        let mut o = passing();
        assert_eq!(
            evaluate(&k, &o, None),
            vec!["the host side of the live window never finished"]
        );
        // ... unless its failure is already recorded.
        o.problems
            .push("host side of the live window: connection refused".into());
        assert_eq!(evaluate(&k, &o, None).len(), 1);
        // A dashboard query without series fails the run and its row.
        let o = passing();
        let full = Live::Full(LiveReport {
            checker_ok: true,
            records: vec![("instance:ctx_x:sum".into(), 1)],
            queries: vec![live::Query {
                expr: "ctx_y".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let f = evaluate(&k, &o, Some(&full));
        assert_eq!(f, vec!["dashboard query returned no series: ctx_y"]);
        let t = report::table(&SYSTEMD, &k, &o, &host_rows(&full), &f);
        assert!(
            t.lines()
                .any(|l| l.contains("dashboard queries return series")
                    && l.trim_end().ends_with("FAIL")
                    && l.contains("0 of 1")),
            "{t}"
        );
        assert!(t.contains("FAIL in"), "{t}");
    }

    #[test]
    fn qemu_forwards_and_cmdline() {
        let c = command(
            &Kernel::fixture(),
            Path::new("/i"),
            Forward {
                metrics: 4000,
                poke: 4001,
            },
            90,
        )
        .command();
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
        assert!(append.ends_with(" ctx.vm.live=90"));
    }

    /// The overlay is what `cargo xtask install --destdir` stages, plus the enabled check, with
    /// nothing that would collide with the rootfs' merged-/usr symlinks.
    #[test]
    fn overlay_holds_the_install_and_the_check() {
        let d = std::env::temp_dir().join(format!("xtask-overlay-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let bins = Binaries {
            ctx: install::Binaries {
                ctx_daemon: d.join("ctx-daemon"),
                ctxtop: d.join("ctxtop"),
            },
            init: d.join("init"),
            work: d.join("work"),
            check: d.join("check"),
        };
        for p in [&bins.ctx.ctx_daemon, &bins.ctx.ctxtop, &bins.check] {
            fs::write(p, "x").unwrap();
        }
        let cpio = overlay(&crate::cmd::root(), &d, &bins).unwrap();
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
}
