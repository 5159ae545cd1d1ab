//! `--web.config.file`: the Prometheus exporter toolkit's web configuration (the YAML that
//! `node_exporter` reads): TLS, basic auth and extra response headers.
//!
//! The file and the files it names are checked for changes at most once a second, on request,
//! and reloaded when they change. A file that no longer loads is refused with a log line and
//! the last good configuration stays in force: a typo never turns authentication off.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;

use crate::host::system::mono_now_ns;
use crate::outputs::tls::{self, TlsError};

#[derive(Debug, Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {path} (name another with --web.config.file)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("web config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("web config file {path}: `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("web config file {path}: `{field}`")]
    Tls {
        path: PathBuf,
        field: &'static str,
        #[source]
        source: TlsError,
    },
}

/// The file as written. Keys the toolkit has and ctx cannot honour are refused, not ignored:
/// ignoring `client_allowed_sans`, say, would let in clients the file keeps out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    tls_server_config: Option<TlsDoc>,
    http_server_config: Option<HttpDoc>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsDoc {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub client_auth_type: Option<String>,
    pub client_ca_file: Option<String>,
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    /// rustls picks from its own safe suites; the preference order has nothing to act on.
    #[expect(dead_code, reason = "accepted for compatibility, no effect")]
    pub prefer_server_cipher_suites: Option<bool>,
    pub curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDoc {
    /// ctx serves HTTP/1.1 only; the key is accepted so `node_exporter`'s files load.
    #[expect(dead_code, reason = "accepted for compatibility, no effect")]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The response headers the toolkit lets a file set, and the values it accepts for them.
const HEADERS: [(&str, Option<&[&str]>); 5] = [
    ("Content-Security-Policy", None),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-XSS-Protection", None),
    ("Strict-Transport-Security", None),
];

/// One loaded configuration.
pub struct Loaded {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// user → bcrypt hash; empty: no authentication.
    users: HashMap<String, String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The YAML file and the certificate files it names: a change to any reloads.
    files: Vec<PathBuf>,
}

impl Loaded {
    fn open() -> Self {
        Self {
            tls: None,
            users: HashMap::new(),
            headers: Vec::new(),
            files: Vec::new(),
        }
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    pub fn basic_auth_users(&self) -> usize {
        self.users.len()
    }

    /// Adds the configured headers to `resp` (401s included, as the toolkit does).
    pub fn decorate(&self, mut resp: Response) -> Response {
        for (k, v) in &self.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
        resp
    }
}

/// Reads and checks `path`; every error names the field at fault.
pub fn load(path: &Path) -> Result<Loaded, WebConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

fn parse(text: &str, path: &Path) -> Result<Loaded, WebConfigError> {
    let field = |field: &str, message: String| WebConfigError::Field {
        path: path.to_owned(),
        field: field.to_owned(),
        message,
    };
    // An empty file is a valid, empty document (plain HTTP, no auth), as for the toolkit.
    let doc: Doc = if text.trim().is_empty() {
        Doc::default()
    } else {
        serde_yaml_ng::from_str::<Option<Doc>>(text)
            .map_err(|e| WebConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?
            .unwrap_or_default()
    };
    if doc.rate_limit.is_some() {
        return Err(field(
            "rate_limit",
            "not supported by ctx; --web.max-requests caps requests in flight".into(),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = vec![path.to_owned()];
    let tls = match doc.tls_server_config {
        Some(t) => tls::server_config(&t, dir, &mut files).map_err(|(field, source)| {
            WebConfigError::Tls {
                path: path.to_owned(),
                field,
                source,
            }
        })?,
        None => None,
    };
    let mut users = HashMap::new();
    for (user, hash) in doc.basic_auth_users.unwrap_or_default() {
        let key = format!("basic_auth_users.{user}");
        if user.contains(':') {
            return Err(field(&key, "a user name cannot contain `:`".into()));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(field(
                &key,
                "not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)".into(),
            ));
        }
        users.insert(user, hash);
    }
    let mut headers = Vec::new();
    let given = doc.http_server_config.and_then(|h| h.headers);
    for (name, value) in given.unwrap_or_default() {
        let key = format!("http_server_config.headers.{name}");
        let Some((canon, allowed)) = HEADERS.iter().find(|(h, _)| h.eq_ignore_ascii_case(&name))
        else {
            let names: Vec<&str> = HEADERS.iter().map(|(h, _)| *h).collect();
            return Err(field(
                &key,
                format!(
                    "this header cannot be configured (allowed: {})",
                    names.join(", ")
                ),
            ));
        };
        if value.is_empty() {
            continue;
        }
        if let Some(ok) = allowed
            && !ok.iter().any(|a| a.eq_ignore_ascii_case(&value))
        {
            return Err(field(
                &key,
                format!("{value:?} is not accepted (use one of: {})", ok.join(", ")),
            ));
        }
        let v = HeaderValue::from_str(&value)
            .map_err(|e| field(&key, format!("{value:?} is not a header value: {e}")))?;
        let n = HeaderName::from_bytes(canon.as_bytes())
            .map_err(|e| field(&key, format!("header name: {e}")))?;
        headers.push((n, v));
    }
    Ok(Loaded {
        tls,
        users,
        headers,
        files,
    })
}

/// mtime, size and inode of each watched file (None: unreadable).
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

struct Current {
    loaded: Arc<Loaded>,
    stamp: Stamp,
    checked_mono: u64,
    /// The stamp of a version that failed to load: not retried until it changes again.
    refused: Option<Stamp>,
}

/// The web configuration in force, reloaded on change; `plain()` when there is no file.
pub struct WebConfig {
    path: Option<PathBuf>,
    current: Mutex<Current>,
    /// Successful verifications: sha256(user, hash, password). bcrypt costs 50-250 ms by
    /// design; without this a 1 s scrape interval would keep a CPU busy.
    verified: Mutex<HashSet<[u8; 32]>>,
    /// bcrypt runs at once: a flood of wrong passwords (never cached) queues here instead of
    /// taking every housekeeping CPU the daemon runs on.
    checks: tokio::sync::Semaphore,
}

/// At most this many cached verifications (a few scrapers each hold one).
const CACHE_MAX: usize = 256;
const RECHECK_NS: u64 = 1_000_000_000;
const BCRYPT_AT_ONCE: usize = 2;

impl WebConfig {
    /// No file: plain HTTP, no authentication.
    pub fn plain() -> Self {
        Self::with(None, Loaded::open())
    }

    /// Loads `path` now: an error here is an error at start.
    pub fn open(path: &Path) -> Result<Self, WebConfigError> {
        let loaded = load(path)?;
        Ok(Self::with(Some(path.to_owned()), loaded))
    }

    fn with(path: Option<PathBuf>, loaded: Loaded) -> Self {
        let stamp = stamp(&loaded.files);
        Self {
            path,
            current: Mutex::new(Current {
                loaded: Arc::new(loaded),
                stamp,
                checked_mono: mono_now_ns(),
                refused: None,
            }),
            verified: Mutex::new(HashSet::new()),
            checks: tokio::sync::Semaphore::new(BCRYPT_AT_ONCE),
        }
    }

    /// The configuration for this connection or request, reloaded first when a watched file
    /// changed (looked at no more than once a second).
    pub fn current(&self) -> Arc<Loaded> {
        let mut c = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Some(path) = &self.path else {
            return Arc::clone(&c.loaded);
        };
        let now = mono_now_ns();
        if now.saturating_sub(c.checked_mono) < RECHECK_NS {
            return Arc::clone(&c.loaded);
        }
        c.checked_mono = now;
        let s = stamp(&c.loaded.files);
        if s == c.stamp || c.refused.as_ref() == Some(&s) {
            return Arc::clone(&c.loaded);
        }
        match load(path) {
            Ok(l) if l.tls_enabled() != c.loaded.tls_enabled() => {
                tracing::error!(
                    path = %path.display(),
                    "web config reload refused: turning TLS on or off needs a restart; keeping \
                     the configuration loaded before"
                );
                c.refused = Some(s);
            }
            Ok(l) => {
                tracing::info!(
                    path = %path.display(),
                    tls = l.tls_enabled(),
                    basic_auth_users = l.basic_auth_users(),
                    "web config reloaded"
                );
                c.stamp = stamp(&l.files);
                c.loaded = Arc::new(l);
                c.refused = None;
            }
            Err(e) => {
                tracing::error!(
                    "web config reload refused, keeping the configuration loaded before: {}",
                    chain(&e)
                );
                c.refused = Some(s);
            }
        }
        Arc::clone(&c.loaded)
    }

    /// `None` when the request may go on; otherwise the 401 to answer with.
    pub async fn authorize(&self, cfg: &Loaded, headers: &HeaderMap) -> Option<Response> {
        if cfg.users.is_empty() {
            return None;
        }
        let ok = match basic_credentials(headers) {
            Some((user, pass)) => self.verify(cfg, user, pass).await,
            None => false,
        };
        (!ok).then(unauthorized)
    }

    async fn verify(&self, cfg: &Loaded, user: String, pass: String) -> bool {
        let hash = cfg.users.get(&user).cloned();
        let key = hash.as_ref().map(|h| cache_key(&user, h, &pass));
        if let Some(k) = &key
            && self.cached(k)
        {
            return true;
        }
        // An unknown user costs a bcrypt run as well, so timing does not tell which users
        // exist. Off the runtime thread: a verification takes tens of milliseconds.
        let Ok(_slot) = self.checks.acquire().await else {
            return false;
        };
        let good = tokio::task::spawn_blocking(move || {
            if let Some(h) = hash {
                bcrypt::verify(pass, &h).unwrap_or(false)
            } else {
                let _ = bcrypt::verify(pass, dummy_hash());
                false
            }
        })
        .await
        .unwrap_or(false);
        if good && let Some(k) = key {
            let mut v = match self.verified.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if v.len() >= CACHE_MAX {
                v.clear();
            }
            v.insert(k);
        }
        good
    }

    fn cached(&self, k: &[u8; 32]) -> bool {
        match self.verified.lock() {
            Ok(g) => g.contains(k),
            Err(p) => p.into_inner().contains(k),
        }
    }
}

fn cache_key(user: &str, hash: &str, pass: &str) -> [u8; 32] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, pass] {
        d.update(&(part.len() as u64).to_le_bytes());
        d.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    out
}

/// A hash no password is known for, at the usual cost (10).
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| bcrypt::hash("ctx: no such user", 10).unwrap_or_default())
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic")],
        "Unauthorized\n",
    )
        .into_response()
}

/// `cause: cause: ...`, for a log line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        chain(&parse(yaml, Path::new("/etc/ctx/web.yml")).err().unwrap())
    }

    #[test]
    fn bad_files_name_the_field() {
        assert!(err("tls_server_config:\n  cert_flie: x\n").contains("cert_flie"));
        let e = err("basic_auth_users:\n  alice: plaintext\n");
        assert!(
            e.contains("basic_auth_users.alice") && e.contains("bcrypt"),
            "{e}"
        );
        let e = err("http_server_config:\n  headers:\n    Server: ctx\n");
        assert!(
            e.contains("headers.Server") && e.contains("cannot be configured"),
            "{e}"
        );
        let e = err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
        assert!(e.contains("deny, sameorigin"), "{e}");
        let e = err("tls_server_config:\n  cert_file: /nonexistent/c.pem\n");
        assert!(
            e.contains("`cert_file`") && e.contains("/nonexistent/c.pem"),
            "{e}"
        );
        let e = err("tls_server_config:\n  cert: x\n");
        assert!(e.contains("`key_file`: missing"), "{e}");
        let e = err("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n");
        assert!(e.contains("`cert_file`: missing"), "{e}");
        let e = err("tls_server_config:\n  client_allowed_sans: [a]\n");
        assert!(e.contains("client_allowed_sans"), "{e}");
        assert!(err("rate_limit:\n  burst: 1\n").contains("rate_limit"));
        assert!(err(": : :").contains("/etc/ctx/web.yml"));
    }

    #[test]
    fn empty_and_header_only_files_load() {
        let l = parse("", Path::new("/x.yml")).unwrap();
        assert!(!l.tls_enabled() && l.users.is_empty());
        let l = parse(
            "http_server_config:\n  headers:\n    x-frame-options: DENY\n    \
             Content-Security-Policy: \"\"\n",
            Path::new("/x.yml"),
        )
        .unwrap();
        assert_eq!(l.headers.len(), 1);
        assert_eq!(l.headers[0].0.as_str(), "x-frame-options");
    }

    #[test]
    fn credentials_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cDpx"),
        );
        assert_eq!(basic_credentials(&h), Some(("alice".into(), "p:q".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&h), None);
        assert_ne!(cache_key("a", "h", "bc"), cache_key("ab", "h", "c"));
    }
}
