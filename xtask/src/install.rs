//! `cargo xtask install`: builds the release binaries and installs what a user of ctx gets.
//!
//! | file | mode |
//! |---|---|
//! | `PREFIX/bin/ctx-daemon`, `PREFIX/bin/ctxtop` | 0755 |
//! | `PREFIX/lib/systemd/system/ctx.service` (`ExecStart=` pointing into PREFIX) | 0644 |
//! | `PREFIX/lib/sysusers.d/ctx.conf` | 0644 |
//! | `/etc/ctx/ctx.toml` (kept when it exists: it is the admin's) | 0644 |
//! | `PREFIX/share/doc/ctx/`: README.md, BENCHMARKS.md (when present), deploy/README.md, examples/ctx.toml | 0644 |
//!
//! Directories are created 0755. Files are written to a temporary name and renamed, so a
//! running ctx-daemon is never overwritten in place. `--destdir` stages the same tree under
//! another root (packaging, VM images). The configuration lives in `/etc` whatever the prefix,
//! as the unit's `--config /etc/ctx/ctx.toml` expects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::cmd::{cargo, root};

pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// Where the configuration goes, whatever the prefix: the unit reads /etc/ctx/ctx.toml.
pub const CONFIG: &str = "/etc/ctx/ctx.toml";
/// The binary path the unit in deploy/ names; `unit_for_prefix` moves it into the prefix.
const UNIT_BIN: &str = "/usr/bin/ctx-daemon";
const UNIT_DOC: &str = "file:/usr/share/doc/ctx/";

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Installation prefix: PREFIX/bin, PREFIX/lib/systemd/system, PREFIX/share/doc/ctx.
    #[arg(long, default_value = "/usr")]
    pub prefix: PathBuf,
    /// Stage everything under this directory instead of / (packages, images).
    #[arg(long)]
    pub destdir: Option<PathBuf>,
    /// Rust target of the binaries. The default, static musl, runs on any distribution.
    #[arg(long, default_value = MUSL)]
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Text(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Policy {
    Replace,
    /// An existing file is the admin's: leave it.
    KeepExisting,
}

/// One file to install, at an absolute path of the target system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub dest: PathBuf,
    pub mode: u32,
    pub source: Source,
    pub policy: Policy,
}

/// What `apply` did with one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    Installed,
    Unchanged,
    /// An existing file that `Policy::KeepExisting` protects, and that differs from ours.
    Kept,
}

pub struct Binaries {
    pub ctx_daemon: PathBuf,
    pub ctxtop: PathBuf,
}

fn check_prefix(prefix: &Path) -> anyhow::Result<()> {
    let s = prefix
        .to_str()
        .with_context(|| format!("prefix {} is not UTF-8", prefix.display()))?;
    if !prefix.is_absolute()
        || prefix
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        bail!("prefix {s:?} must be an absolute path without . or .. (e.g. /usr or /usr/local)");
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c == '%' || c == '"' || c == '\\')
    {
        bail!(
            "prefix {s:?} holds characters systemd would need quoted in ExecStart=; choose another"
        );
    }
    Ok(())
}

/// The unit of deploy/systemd with its `ExecStart=` and Documentation= moved into `prefix`. Only
/// ctx's own paths move: `ExecStartPre=` keeps running the system's install and chown.
pub fn unit_for_prefix(unit: &str, prefix: &Path) -> anyhow::Result<String> {
    let p = prefix.to_string_lossy();
    let p = p.trim_end_matches('/');
    let mut execs = 0;
    let mut out = String::with_capacity(unit.len() + 64);
    for line in unit.lines() {
        if let Some(rest) = line.strip_prefix("ExecStart=") {
            let Some(args) = rest.strip_prefix(UNIT_BIN) else {
                bail!(
                    "ctx.service has an ExecStart= that does not run {UNIT_BIN} ({line:?}): \
                     update install.rs along with the unit"
                );
            };
            execs += 1;
            let _ = write!(out, "ExecStart={p}/bin/ctx-daemon{args}");
        } else if line.starts_with("Documentation=") {
            out.push_str(&line.replace(UNIT_DOC, &format!("file:{p}/share/doc/ctx/")));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if execs != 1 {
        bail!(
            "ctx.service has {execs} ExecStart= lines running {UNIT_BIN}, expected 1: update \
             install.rs along with the unit"
        );
    }
    Ok(out)
}

/// Everything `cargo xtask install` puts on the target system, from the workspace at `root`.
pub fn plan(root: &Path, prefix: &Path, bins: &Binaries) -> anyhow::Result<Vec<Item>> {
    check_prefix(prefix)?;
    let deploy = root.join("deploy");
    let read = |p: &Path| {
        fs::read_to_string(p)
            .with_context(|| format!("reading {} (the workspace's deploy/)", p.display()))
    };
    let unit = unit_for_prefix(&read(&deploy.join("systemd/ctx.service"))?, prefix)?;
    let file = |dest: PathBuf, mode: u32, src: PathBuf| Item {
        dest,
        mode,
        source: Source::File(src),
        policy: Policy::Replace,
    };
    let doc = prefix.join("share/doc/ctx");
    let mut items = vec![
        file(
            prefix.join("bin/ctx-daemon"),
            0o755,
            bins.ctx_daemon.clone(),
        ),
        file(prefix.join("bin/ctxtop"), 0o755, bins.ctxtop.clone()),
        Item {
            dest: prefix.join("lib/systemd/system/ctx.service"),
            mode: 0o644,
            source: Source::Text(unit),
            policy: Policy::Replace,
        },
        file(
            prefix.join("lib/sysusers.d/ctx.conf"),
            0o644,
            deploy.join("systemd/ctx.sysusers"),
        ),
        Item {
            dest: PathBuf::from(CONFIG),
            mode: 0o644,
            source: Source::File(deploy.join("systemd/ctx.toml")),
            policy: Policy::KeepExisting,
        },
    ];
    for (name, required) in [("README.md", false), ("BENCHMARKS.md", false)] {
        let src = root.join(name);
        if src.exists() || required {
            items.push(file(doc.join(name), 0o644, src));
        }
    }
    items.push(file(
        doc.join("deploy/README.md"),
        0o644,
        deploy.join("README.md"),
    ));
    // The shipped default, for comparing with a kept /etc/ctx/ctx.toml.
    items.push(file(
        doc.join("examples/ctx.toml"),
        0o644,
        deploy.join("systemd/ctx.toml"),
    ));
    for i in &items {
        if let Source::File(p) = &i.source
            && !p.is_file()
        {
            bail!(
                "{} is missing (to be installed as {})",
                p.display(),
                i.dest.display()
            );
        }
    }
    Ok(items)
}

/// Where `dest` lands under `destdir`.
pub fn staged(dest: &Path, destdir: Option<&Path>) -> PathBuf {
    match destdir {
        Some(d) => d.join(dest.strip_prefix("/").unwrap_or(dest)),
        None => dest.to_owned(),
    }
}

/// Creates the missing directories of `dir`, each 0755 whatever the umask.
fn make_dirs(dir: &Path) -> anyhow::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for d in missing.into_iter().rev() {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", d.display()))?;
    }
    Ok(())
}

/// Installs `items` under `destdir` (or /).
pub fn apply(items: &[Item], destdir: Option<&Path>) -> anyhow::Result<Vec<(PathBuf, Done)>> {
    let mut done = Vec::new();
    for i in items {
        let path = staged(&i.dest, destdir);
        let data = match &i.source {
            Source::File(p) => fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            Source::Text(t) => t.clone().into_bytes(),
        };
        if let Ok(old) = fs::read(&path) {
            let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o7777)?;
            if old == data && mode == i.mode {
                done.push((i.dest.clone(), Done::Unchanged));
                continue;
            }
            if i.policy == Policy::KeepExisting {
                done.push((i.dest.clone(), Done::Kept));
                continue;
            }
        }
        let dir = path
            .parent()
            .with_context(|| format!("{} has no parent directory", path.display()))?;
        make_dirs(dir)?;
        let name = path
            .file_name()
            .with_context(|| format!("{} has no file name", path.display()))?;
        let tmp = dir.join(format!(".{}.xtask-install", name.to_string_lossy()));
        fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(i.mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        done.push((i.dest.clone(), Done::Installed));
    }
    Ok(done)
}

/// `cargo build --release --target TARGET -p P... --bins`; returns each executable by name.
pub fn build(
    root: &Path,
    target: &str,
    packages: &[&str],
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut c = cargo();
    c.current_dir(root)
        .args(["build", "--release", "--target", target, "--bins"])
        .arg("--message-format=json-render-diagnostics");
    for p in packages {
        c.args(["-p", p]);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo build")?;
    let stdout = child.stdout.take().context("no pipe from cargo")?;
    let mut exes = BTreeMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            exes.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!(
            "cargo build --release --target {target} failed ({status}); if the target or \
             bpf-linker is missing, run .ci/setup"
        );
    }
    Ok(exes)
}

/// The two binaries of ctx-daemon's package, built for `target`.
pub fn build_ctx(root: &Path, target: &str) -> anyhow::Result<Binaries> {
    let mut exes = build(root, target, &["ctx-daemon"])?;
    let mut take = |n: &str| {
        exes.remove(n)
            .with_context(|| format!("cargo build produced no {n} executable"))
    };
    Ok(Binaries {
        ctx_daemon: take("ctx-daemon")?,
        ctxtop: take("ctxtop")?,
    })
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    check_prefix(&o.prefix)?;
    let root = root();
    eprintln!(
        "install: building ctx-daemon and ctxtop (release, {})",
        o.target
    );
    let bins = build_ctx(&root, &o.target)?;
    let items = plan(&root, &o.prefix, &bins)?;
    let dest = o.destdir.as_deref();
    let done = apply(&items, dest)?;
    for ((path, what), item) in done.iter().zip(&items) {
        let shown = staged(path, dest);
        match what {
            Done::Installed => println!("installed {:04o} {}", item.mode, shown.display()),
            Done::Unchanged => println!("unchanged {:04o} {}", item.mode, shown.display()),
            Done::Kept => println!(
                "kept      {} (yours; the default is {})",
                shown.display(),
                staged(&o.prefix.join("share/doc/ctx/examples/ctx.toml"), dest).display()
            ),
        }
    }
    let unit_dirs = ["/usr", "/usr/local"];
    if !unit_dirs.iter().any(|d| o.prefix == Path::new(d)) {
        println!(
            "note: systemd and systemd-sysusers do not look under {p}/lib; link the unit with \
             `systemctl link {p}/lib/systemd/system/ctx.service` and run `systemd-sysusers \
             {p}/lib/sysusers.d/ctx.conf`",
            p = o.prefix.display()
        );
    }
    if dest.is_none() {
        println!(
            "next: systemd-sysusers {p}/lib/sysusers.d/ctx.conf && systemctl daemon-reload && \
             systemctl enable --now ctx",
            p = o.prefix.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let d =
                std::env::temp_dir().join(format!("xtask-install-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Self(d)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fake_bins(dir: &Path) -> Binaries {
        let b = Binaries {
            ctx_daemon: dir.join("ctx-daemon"),
            ctxtop: dir.join("ctxtop"),
        };
        fs::write(&b.ctx_daemon, "daemon").unwrap();
        fs::write(&b.ctxtop, "top").unwrap();
        b
    }

    fn text(items: &[Item], dest: &str) -> String {
        let i = items.iter().find(|i| i.dest == Path::new(dest)).unwrap();
        match &i.source {
            Source::Text(t) => t.clone(),
            Source::File(p) => fs::read_to_string(p).unwrap(),
        }
    }

    #[test]
    fn plan_lists_what_a_user_gets() {
        let s = Scratch::new("plan");
        let root = root();
        let items = plan(&root, Path::new("/usr"), &fake_bins(&s.0)).unwrap();
        let mut got: Vec<(String, u32, Policy)> = items
            .iter()
            .map(|i| (i.dest.display().to_string(), i.mode, i.policy))
            .collect();
        let mut want = vec![
            ("/usr/bin/ctx-daemon".to_owned(), 0o755, Policy::Replace),
            ("/usr/bin/ctxtop".to_owned(), 0o755, Policy::Replace),
            (
                "/usr/lib/systemd/system/ctx.service".to_owned(),
                0o644,
                Policy::Replace,
            ),
            (
                "/usr/lib/sysusers.d/ctx.conf".to_owned(),
                0o644,
                Policy::Replace,
            ),
            ("/etc/ctx/ctx.toml".to_owned(), 0o644, Policy::KeepExisting),
            (
                "/usr/share/doc/ctx/deploy/README.md".to_owned(),
                0o644,
                Policy::Replace,
            ),
            (
                "/usr/share/doc/ctx/examples/ctx.toml".to_owned(),
                0o644,
                Policy::Replace,
            ),
        ];
        for optional in ["README.md", "BENCHMARKS.md"] {
            if root.join(optional).exists() {
                want.push((
                    format!("/usr/share/doc/ctx/{optional}"),
                    0o644,
                    Policy::Replace,
                ));
            }
        }
        got.sort();
        want.sort();
        assert_eq!(got, want);
        // /usr: the unit is deploy/'s, byte for byte.
        assert_eq!(
            text(&items, "/usr/lib/systemd/system/ctx.service"),
            fs::read_to_string(root.join("deploy/systemd/ctx.service")).unwrap()
        );
    }

    #[test]
    fn unit_follows_the_prefix() {
        let s = Scratch::new("prefix");
        let items = plan(&root(), Path::new("/usr/local"), &fake_bins(&s.0)).unwrap();
        assert!(
            items
                .iter()
                .any(|i| i.dest == Path::new("/usr/local/bin/ctx-daemon"))
        );
        assert!(
            items
                .iter()
                .any(|i| i.dest == Path::new("/etc/ctx/ctx.toml"))
        );
        let unit = text(&items, "/usr/local/lib/systemd/system/ctx.service");
        let execs: Vec<&str> = unit
            .lines()
            .filter(|l| l.starts_with("ExecStart"))
            .collect();
        assert_eq!(
            execs,
            vec![
                "ExecStartPre=+/usr/bin/install -d -m 0700 /sys/fs/bpf/ctx",
                "ExecStartPre=+/usr/bin/chown -R ctx:ctx /sys/fs/bpf/ctx",
                "ExecStart=/usr/local/bin/ctx-daemon --config /etc/ctx/ctx.toml --pin-dir /run/ctx/pins",
            ]
        );
        assert!(unit.contains("Documentation=file:/usr/local/share/doc/ctx/deploy/README.md\n"));
        assert!(!unit.contains("file:/usr/share/doc"));
    }

    #[test]
    fn unit_rewrite_refuses_surprises() {
        let p = Path::new("/opt/ctx");
        assert!(unit_for_prefix("[Service]\nExecStart=/bin/true\n", p).is_err());
        assert!(unit_for_prefix("[Service]\nType=notify\n", p).is_err());
        let two = "ExecStart=/usr/bin/ctx-daemon\nExecStart=/usr/bin/ctx-daemon -x\n";
        assert!(unit_for_prefix(two, p).is_err());
        assert_eq!(
            unit_for_prefix(
                "ExecStart=/usr/bin/ctx-daemon --x\n",
                Path::new("/opt/ctx/")
            )
            .unwrap(),
            "ExecStart=/opt/ctx/bin/ctx-daemon --x\n"
        );
        for bad in ["usr", "/usr/../tmp", "/my prefix", "/a%b"] {
            assert!(check_prefix(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn apply_sets_modes_and_keeps_the_admins_config() {
        let s = Scratch::new("apply");
        let bins = fake_bins(&s.0);
        let dest = s.0.join("root");
        let items = plan(&root(), Path::new("/usr"), &bins).unwrap();
        let done = apply(&items, Some(&dest)).unwrap();
        assert!(done.iter().all(|d| d.1 == Done::Installed), "{done:?}");
        for i in &items {
            let p = staged(&i.dest, Some(&dest));
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, i.mode, "{}", p.display());
        }
        for d in [
            "usr",
            "usr/bin",
            "usr/lib/systemd/system",
            "etc/ctx",
            "usr/share/doc/ctx/deploy",
        ] {
            let mode = fs::metadata(dest.join(d)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{d}");
        }
        assert!(!fs::read_dir(dest.join("usr/bin")).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".xtask-install")
        }));

        // Again: nothing to do.
        let again = apply(&items, Some(&dest)).unwrap();
        assert!(again.iter().all(|d| d.1 == Done::Unchanged), "{again:?}");

        // The admin edits the config; a new build changes the binary.
        let conf = dest.join("etc/ctx/ctx.toml");
        fs::write(&conf, "listen = \"127.0.0.1:10977\"\n").unwrap();
        fs::write(&bins.ctx_daemon, "daemon v2").unwrap();
        let third: BTreeMap<PathBuf, Done> =
            apply(&items, Some(&dest)).unwrap().into_iter().collect();
        assert_eq!(third[Path::new("/etc/ctx/ctx.toml")], Done::Kept);
        assert_eq!(third[Path::new("/usr/bin/ctx-daemon")], Done::Installed);
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            "listen = \"127.0.0.1:10977\"\n"
        );
        assert_eq!(
            fs::read_to_string(dest.join("usr/bin/ctx-daemon")).unwrap(),
            "daemon v2"
        );
    }
}
