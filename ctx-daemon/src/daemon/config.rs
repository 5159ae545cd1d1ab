//! ctx-daemon settings: built-in defaults, then the TOML config file, then flags (flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::cli::parse_sample_interval;
use crate::host::cpuset::CpuSet;
use crate::outputs::serve::DEFAULT_TELEMETRY_PATH;
use crate::probes::DEFAULT_PIN_DIR;
use crate::probes::verify::DEFAULT_STATE_DIR;

/// Beyond the 9100-9999 exporter range of Prometheus' default port allocations, which has
/// been fully allocated since 2023.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:10977";
pub const DEFAULT_CONFIG: &str = "/etc/ctx/ctx.toml";
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// The config file. Every key is optional and mirrors a flag.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The older spelling of `web.listen-address`.
    pub listen: Option<String>,
    /// `web.listen-address = ...` and the like: TOML's dotted keys spell the flags' names.
    pub web: Option<WebKeys>,
    pub cpus: Option<String>,
    pub sample_interval: Option<String>,
    pub pin_dir: Option<PathBuf>,
    pub housekeeping_affinity: Option<bool>,
    pub state_dir: Option<PathBuf>,
}

/// The `web.*` keys, named like the exporter flags (`--web.listen-address` is
/// `web.listen-address` in the file).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WebKeys {
    pub listen_address: Option<String>,
    pub telemetry_path: Option<String>,
    pub config: Option<WebConfigKeys>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebConfigKeys {
    /// `web.config.file`: the exporter toolkit's YAML (TLS, basic auth, headers).
    pub file: Option<PathBuf>,
}

/// Flags as given (None: not on the command line).
#[derive(Debug, Default, Clone)]
pub struct FlagConfig {
    pub listen: Option<SocketAddr>,
    pub telemetry_path: Option<String>,
    pub web_config_file: Option<PathBuf>,
    pub cpus: Option<CpuSet>,
    pub sample_interval: Option<Duration>,
    pub pin_dir: Option<PathBuf>,
    pub housekeeping_affinity: Option<bool>,
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where `/metrics` is served (`--web.telemetry-path`).
    pub telemetry_path: String,
    /// `--web.config.file`; None: plain HTTP without authentication.
    pub web_config_file: Option<PathBuf>,
    pub cpus: Option<CpuSet>,
    pub sample_interval: Duration,
    pub pin_dir: PathBuf,
    /// Keep ctx's own threads off `nohz_full` CPUs.
    pub housekeeping_affinity: bool,
    /// ctx-daemon's own files (verifier logs of refused programs).
    pub state_dir: PathBuf,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path} (name another with --config)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the CPU list is empty: name CPUs (e.g. --cpus 1-15) or leave it out for all")]
    NoCpus,
    #[error(
        "CPUs {cpus} are not possible on this host (possible: {possible}); fix --cpus or `cpus`"
    )]
    ImpossibleCpus { cpus: CpuSet, possible: CpuSet },
    #[error("config file {path}: key `{key}`: {message}")]
    Value {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// Reads `path`; `Ok(None)` when it is the default path and does not exist.
pub fn read_file(path: &Path, explicit: bool) -> Result<Option<FileConfig>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse_file(&text, path).map(Some)
}

pub fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

pub fn resolve(
    flags: &FlagConfig,
    file: Option<&FileConfig>,
    path: &Path,
) -> Result<Settings, ConfigError> {
    let bad = |key, message: String| ConfigError::Value {
        path: path.to_owned(),
        key,
        message,
    };
    let f = file.cloned().unwrap_or_default();
    let web = f.web.clone().unwrap_or_default();
    let file_listen = match (&f.listen, &web.listen_address) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "web.listen-address",
                "set it or its older spelling `listen`, not both".into(),
            ));
        }
        (a, b) => a.as_ref().or(b.as_ref()),
    };
    let listen = match (flags.listen, file_listen) {
        (Some(l), _) => l,
        (None, Some(s)) => s.parse().map_err(|e| {
            bad(
                "web.listen-address",
                format!("{s:?}: {e} (expected ADDR:PORT)"),
            )
        })?,
        (None, None) => DEFAULT_LISTEN
            .parse()
            .map_err(|e| bad("listen", format!("built-in default: {e}")))?,
    };
    let cpus = match (&flags.cpus, &f.cpus) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(s)) => Some(s.parse().map_err(|e| bad("cpus", format!("{e}")))?),
        (None, None) => None,
    };
    if cpus.as_ref().is_some_and(CpuSet::is_empty) {
        return Err(ConfigError::NoCpus);
    }
    let sample_interval = match (flags.sample_interval, &f.sample_interval) {
        (Some(d), _) => d,
        (None, Some(s)) => parse_sample_interval(s).map_err(|e| bad("sample_interval", e))?,
        (None, None) => DEFAULT_SAMPLE_INTERVAL,
    };
    let pin_dir = flags
        .pin_dir
        .clone()
        .or(f.pin_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    let housekeeping_affinity = flags
        .housekeeping_affinity
        .or(f.housekeeping_affinity)
        .unwrap_or(true);
    let state_dir = flags
        .state_dir
        .clone()
        .or(f.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let telemetry_path = match (&flags.telemetry_path, &web.telemetry_path) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => parse_telemetry_path(p).map_err(|e| bad("web.telemetry-path", e))?,
        (None, None) => DEFAULT_TELEMETRY_PATH.to_owned(),
    };
    // A relative `web.config.file` is taken from the config file's folder.
    let web_config_file = flags.web_config_file.clone().or_else(|| {
        let f = web.config.as_ref()?.file.as_ref()?;
        Some(path.parent().map_or_else(|| f.clone(), |d| d.join(f)))
    });
    Ok(Settings {
        listen,
        telemetry_path,
        web_config_file,
        cpus,
        sample_interval,
        pin_dir,
        housekeeping_affinity,
        state_dir,
    })
}

/// A `/path` for the metrics: plain characters only (it goes into the landing page's links),
/// and not `/` or `/healthz`, which are served already.
pub fn parse_telemetry_path(s: &str) -> Result<String, String> {
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    if !s.starts_with('/') || s.len() < 2 || !plain || s.contains("//") {
        return Err(format!(
            "telemetry path {s:?} must be a plain /path of letters, digits and -._~ (e.g. \
             /metrics)"
        ));
    }
    if s == "/healthz" {
        return Err("telemetry path /healthz is taken by the health check".into());
    }
    Ok(s.to_owned())
}

/// Refuses CPUs the host cannot have: a filter naming only those would export no CPU series
/// while `/healthz` says ok.
pub fn check_cpus(cpus: Option<&CpuSet>, possible: &CpuSet) -> Result<(), ConfigError> {
    let Some(c) = cpus else { return Ok(()) };
    let beyond: CpuSet = c.iter().filter(|x| !possible.contains(*x)).collect();
    if beyond.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::ImpossibleCpus {
            cpus: beyond,
            possible: possible.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults() {
        let p = Path::new("/etc/ctx/ctx.toml");
        let file = parse_file(
            "listen = \"127.0.0.1:1234\"\ncpus = \"1-3\"\nsample_interval = \"20ms\"\n",
            p,
        )
        .unwrap();
        let s = resolve(&FlagConfig::default(), Some(&file), p).unwrap();
        assert_eq!(s.listen.port(), 1234);
        assert_eq!(s.cpus.unwrap().to_string(), "1-3");
        assert_eq!(s.sample_interval, Duration::from_millis(20));
        assert_eq!(s.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        let flags = FlagConfig {
            listen: Some("127.0.0.1:99".parse().unwrap()),
            sample_interval: Some(Duration::from_millis(5)),
            ..Default::default()
        };
        let s = resolve(&flags, Some(&file), p).unwrap();
        assert_eq!(s.listen.port(), 99);
        assert_eq!(s.sample_interval, Duration::from_millis(5));
        let s = resolve(&FlagConfig::default(), None, p).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert!(s.housekeeping_affinity);
        assert_eq!(s.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        let file = parse_file("state_dir = \"/srv/ctx\"\n", p).unwrap();
        let s = resolve(&FlagConfig::default(), Some(&file), p).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/srv/ctx"));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let p = Path::new("/x.toml");
        let e = parse_file("lisen = \"a\"", p).unwrap_err().to_string();
        assert!(e.contains("/x.toml") && e.contains("lisen"), "{e}");
        let f = parse_file("sample_interval = \"soon\"", p).unwrap();
        let e = resolve(&FlagConfig::default(), Some(&f), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample_interval"), "{e}");
        let f = parse_file("listen = \"nowhere\"", p).unwrap();
        let e = resolve(&FlagConfig::default(), Some(&f), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ADDR:PORT"), "{e}");
        let f = parse_file(
            "listen = \"127.0.0.1:1\"\nweb.listen-address = \"127.0.0.1:2\"",
            p,
        )
        .unwrap();
        let e = resolve(&FlagConfig::default(), Some(&f), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
        let f = parse_file("web.telemetry-path = \"metrics\"", p).unwrap();
        let e = resolve(&FlagConfig::default(), Some(&f), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.telemetry-path"), "{e}");
        assert!(
            read_file(Path::new("/nonexistent/ctx.toml"), false)
                .unwrap()
                .is_none()
        );
        assert!(read_file(Path::new("/nonexistent/ctx.toml"), true).is_err());
    }

    #[test]
    fn web_keys_spell_the_flags() {
        let p = Path::new("/etc/ctx/ctx.toml");
        let f = parse_file(
            "web.listen-address = \"127.0.0.1:9\"\nweb.telemetry-path = \"/m\"\n\
             web.config.file = \"web.yml\"\n",
            p,
        )
        .unwrap();
        let s = resolve(&FlagConfig::default(), Some(&f), p).unwrap();
        assert_eq!(s.listen.port(), 9);
        assert_eq!(s.telemetry_path, "/m");
        assert_eq!(s.web_config_file, Some(PathBuf::from("/etc/ctx/web.yml")));
        let s = resolve(&FlagConfig::default(), None, p).unwrap();
        assert_eq!(s.telemetry_path, "/metrics");
        assert_eq!(s.web_config_file, None);
        for bad in [
            "", "/", "metrics", "/a b", "/a\"b", "//x", "/healthz", "/{x}",
        ] {
            assert!(parse_telemetry_path(bad).is_err(), "{bad}");
        }
        assert!(parse_telemetry_path("/ctx/metrics").is_ok());
    }

    #[test]
    fn cpus_and_intervals_are_bounded() {
        let p = Path::new("/x.toml");
        let f = parse_file("cpus = \"\"", p).unwrap();
        assert!(matches!(
            resolve(&FlagConfig::default(), Some(&f), p),
            Err(ConfigError::NoCpus)
        ));
        let f = parse_file("sample_interval = \"1ns\"", p).unwrap();
        assert!(resolve(&FlagConfig::default(), Some(&f), p).is_err());
        let possible: CpuSet = "0-3".parse().unwrap();
        assert!(check_cpus(Some(&"1-3".parse().unwrap()), &possible).is_ok());
        let e = check_cpus(Some(&"2,999".parse().unwrap()), &possible)
            .unwrap_err()
            .to_string();
        assert!(e.contains("999") && e.contains("0-3"), "{e}");
    }

    #[test]
    fn errors_print_each_cause_once() {
        let p = Path::new("/nonexistent/ctx.toml");
        let e = read_file(p, true).unwrap_err();
        let shown = crate::test_util::printed_once(e);
        assert_eq!(
            shown.matches("os error 2").count(),
            1,
            "the io error once: {shown}"
        );
        assert!(shown.contains("--config"), "{shown}");
        let e = parse_file("lisen = 1", p).unwrap_err();
        crate::test_util::printed_once(e);
        let f = parse_file("cpus = \"x\"", p).unwrap();
        let e = resolve(&FlagConfig::default(), Some(&f), p).unwrap_err();
        crate::test_util::printed_once(e);
    }
}
