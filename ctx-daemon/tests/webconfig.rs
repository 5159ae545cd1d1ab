//! `--web.config.file` as a client sees it: curl over TLS with and without credentials and
//! client certificates (valid, from another CA, expired), TLS version bounds, headers, reloads,
//! the handshake under the header timeout, bcrypt's cost with and without the cache, and a real
//! Prometheus scraping the real daemon over TLS with basic auth. Certificates are made here
//! (rcgen). Without curl (or, for the last test, root and Debian's `prometheus`) the tests say
//! why and return, unless `CTX_REQUIRE_KERNEL_TESTS=1` (set by CI).
#![allow(
    clippy::unwrap_used,
    reason = "test setup that fails should fail the test loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use ctx::outputs::serve::{Limits, serve_with};
use ctx::outputs::webconfig::WebConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

fn required() -> bool {
    std::env::var("CTX_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
}

fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "{test}: cannot run ({why}) and CTX_REQUIRE_KERNEL_TESTS=1"
    );
    eprintln!("skipped {test}: {why}");
}

fn have_curl(test: &str) -> bool {
    let ok = Command::new("curl").arg("--version").output().is_ok();
    if !ok {
        skip(test, "`curl` not installed (Debian package curl)");
    }
    ok
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ctx-web-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost, and client certificates: one from the
/// CA, one from another CA, one from the CA but expired. PEM files in `dir`.
fn make_pki(dir: &TempDir) {
    fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let pem = p.self_signed(&key).unwrap().pem();
        (p, key, pem)
    }
    let leaf = |dir: &TempDir,
                name: &str,
                sans: Vec<String>,
                usage: ExtendedKeyUsagePurpose,
                issuer: &Issuer<'_, KeyPair>,
                expired: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, issuer).unwrap();
        dir.write(&format!("{name}.pem"), &cert.pem());
        dir.write(&format!("{name}.key"), &key.serialize_pem());
    };
    let (ca_p, ca_k, ca_pem) = ca("ctx test CA");
    dir.write("ca.pem", &ca_pem);
    let issuer = Issuer::new(ca_p, ca_k);
    let (other_p, other_k, _) = ca("some other CA");
    let other = Issuer::new(other_p, other_k);
    let server = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    leaf(
        dir,
        "server",
        server,
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
        false,
    );
    let client = || ExtendedKeyUsagePurpose::ClientAuth;
    leaf(dir, "client", vec![], client(), &issuer, false);
    leaf(dir, "client-other-ca", vec![], client(), &other, false);
    leaf(dir, "client-expired", vec![], client(), &issuer, true);
}

const TLS: &str = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";

/// A bcrypt hash at a low cost: these tests check behaviour, not bcrypt's speed.
fn hash(pass: &str) -> String {
    bcrypt::hash(pass, 4).unwrap()
}

/// Serves a stand-in `/metrics` under `web` on a loopback port of its own thread.
fn start(web: &Path, limits: Limits) -> u16 {
    let web = Arc::new(WebConfig::open(web).unwrap());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            let app = Router::new().route("/metrics", get(|| async { "ctx_test_up 1\n" }));
            serve_with(l, app, limits, web, std::future::pending()).await;
        });
    });
    port
}

struct Reply {
    exit: i32,
    status: u16,
    text: String,
}

/// `curl -i https://127.0.0.1:PORT/metrics` trusting the test CA, plus `args`.
fn curl(dir: &TempDir, port: u16, args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .current_dir(&dir.0)
        .args(["-sS", "-i", "--max-time", "5", "--cacert", "ca.pem"])
        .args(args)
        .arg(format!("https://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        exit: out.status.code().unwrap_or(-1),
        status,
        text,
    }
}

fn cert_args(name: &str) -> [String; 4] {
    [
        "--cert".into(),
        format!("{name}.pem"),
        "--key".into(),
        format!("{name}.key"),
    ]
}

fn curl_cert(dir: &TempDir, port: u16, name: &str) -> Reply {
    let a = cert_args(name);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    curl(dir, port, &a)
}

fn assert_refused(r: &Reply, what: &str) {
    assert!(
        r.exit != 0 && r.status != 200,
        "{what}: expected a failed handshake, got exit {} status {}: {}",
        r.exit,
        r.status,
        r.text
    );
}

#[test]
fn basic_auth_over_tls() {
    if !have_curl("basic_auth_over_tls") {
        return;
    }
    let dir = TempDir::new("auth");
    make_pki(&dir);
    let web = dir.write(
        "web.yml",
        &format!(
            "{TLS}basic_auth_users:\n  prometheus: {}\nhttp_server_config:\n  headers:\n    \
             X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n",
            hash("s3cret")
        ),
    );
    let port = start(&web, Limits::default());
    let r = curl(&dir, port, &[]);
    assert_eq!(r.status, 401, "{}", r.text);
    let lower = r.text.to_ascii_lowercase();
    assert!(lower.contains("www-authenticate: basic"), "{}", r.text);
    assert!(
        lower.contains("x-frame-options: deny"),
        "on 401s too: {}",
        r.text
    );
    for bad in [
        "prometheus:wrong",
        "prometheus:",
        "nobody:s3cret",
        "prometheus:s3cret2",
    ] {
        let r = curl(&dir, port, &["-u", bad]);
        assert_eq!(r.status, 401, "{bad}: {}", r.text);
    }
    let r = curl(&dir, port, &["-u", "prometheus:s3cret"]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("ctx_test_up 1"), "{}", r.text);
    let lower = r.text.to_ascii_lowercase();
    assert!(
        lower.contains("x-content-type-options: nosniff"),
        "{}",
        r.text
    );
    // Plain HTTP to the TLS port gets nothing served.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
}

#[test]
fn client_certificates() {
    if !have_curl("client_certificates") {
        return;
    }
    let dir = TempDir::new("mtls");
    make_pki(&dir);
    let with = |auth: &str| {
        let yml = format!("{TLS}  client_auth_type: {auth}\n  client_ca_file: ca.pem\n");
        start(&dir.write(&format!("{auth}.yml"), &yml), Limits::default())
    };
    let strict = with("RequireAndVerifyClientCert");
    assert_eq!(curl_cert(&dir, strict, "client").status, 200);
    assert_refused(&curl(&dir, strict, &[]), "no client certificate");
    assert_refused(&curl_cert(&dir, strict, "client-other-ca"), "another CA");
    assert_refused(&curl_cert(&dir, strict, "client-expired"), "expired");

    let if_given = with("VerifyClientCertIfGiven");
    assert_eq!(curl(&dir, if_given, &[]).status, 200);
    assert_eq!(curl_cert(&dir, if_given, "client").status, 200);
    assert_refused(&curl_cert(&dir, if_given, "client-other-ca"), "another CA");
    assert_refused(&curl_cert(&dir, if_given, "client-expired"), "expired");

    // Asked for but not verified, as in Go's crypto/tls.
    let any = with("RequireAnyClientCert");
    assert_refused(&curl(&dir, any, &[]), "no client certificate");
    assert_eq!(curl_cert(&dir, any, "client-other-ca").status, 200);
}

#[test]
fn tls_version_bounds() {
    if !have_curl("tls_version_bounds") {
        return;
    }
    let dir = TempDir::new("versions");
    make_pki(&dir);
    let only13 = start(
        &dir.write("13.yml", &format!("{TLS}  min_version: TLS13\n")),
        Limits::default(),
    );
    assert_eq!(curl(&dir, only13, &["--tlsv1.3"]).status, 200);
    assert_refused(
        &curl(&dir, only13, &["--tlsv1.2", "--tls-max", "1.2"]),
        "TLS 1.2 to a TLS13 minimum",
    );
    let only12 = start(
        &dir.write("12.yml", &format!("{TLS}  max_version: TLS12\n")),
        Limits::default(),
    );
    assert_eq!(curl(&dir, only12, &["--tls-max", "1.2"]).status, 200);
    assert_refused(
        &curl(&dir, only12, &["--tlsv1.3"]),
        "TLS 1.3 to a TLS12 maximum",
    );
}

#[test]
fn reloads_and_never_falls_open() {
    if !have_curl("reloads_and_never_falls_open") {
        return;
    }
    let dir = TempDir::new("reload");
    make_pki(&dir);
    let users = |pass: &str| format!("{TLS}basic_auth_users:\n  prometheus: {}\n", hash(pass));
    let web = dir.write("web.yml", &users("one"));
    let port = start(&web, Limits::default());
    assert_eq!(curl(&dir, port, &["-u", "prometheus:one"]).status, 200);
    std::fs::write(&web, users("two")).unwrap();
    // Looked at no more than once a second.
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(curl(&dir, port, &["-u", "prometheus:one"]).status, 401);
    assert_eq!(curl(&dir, port, &["-u", "prometheus:two"]).status, 200);
    // A broken file is refused and the last good one stays in force.
    for broken in [
        "basic_auth_users: [\n".to_owned(),
        format!("{TLS}basic_auth_users:\n  prometheus: plaintext\n"),
        format!("{TLS}  client_auth_type: Sometimes\n"),
        "basic_auth_users:\n  prometheus: x\n".to_owned(),
    ] {
        std::fs::write(&web, &broken).unwrap();
        thread::sleep(Duration::from_millis(1100));
        assert_eq!(curl(&dir, port, &[]).status, 401, "after {broken:?}");
        assert_eq!(
            curl(&dir, port, &["-u", "prometheus:two"]).status,
            200,
            "after {broken:?}"
        );
    }
}

#[test]
fn tls_handshake_is_under_the_header_timeout() {
    use std::io::Read as _;
    if !have_curl("tls_handshake_is_under_the_header_timeout") {
        return;
    }
    let dir = TempDir::new("slow");
    make_pki(&dir);
    let limits = Limits {
        max_connections: 1,
        max_requests: 4,
        header_read_timeout: Duration::from_millis(300),
    };
    let port = start(&dir.write("web.yml", TLS), limits);
    // A client that connects and never says hello holds the only slot...
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_ne!(curl(&dir, port, &[]).status, 200, "the cap held");
    // ...until the handshake times out, which closes it and frees the slot.
    silent
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let n = silent.read_to_end(&mut buf);
    assert!(
        n.is_ok() && t.elapsed() < Duration::from_secs(2),
        "silent TLS client not closed: {n:?} after {:?}",
        t.elapsed()
    );
    assert_eq!(curl(&dir, port, &[]).status, 200);
}

#[test]
fn bcrypt_is_paid_once_per_scraper() {
    let dir = TempDir::new("cost");
    // The toolkit's documented cost: about 70 ms a check on a typical machine.
    let h = bcrypt::hash("s3cret", 10).unwrap();
    let web = dir.write(
        "web.yml",
        &format!("basic_auth_users:\n  prometheus: {h}\n"),
    );
    let web = WebConfig::open(&web).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        // prometheus:s3cret
        "Basic cHJvbWV0aGV1czpzM2NyZXQ=".parse().unwrap(),
    );
    let cfg = web.current();
    let time = |n: u32| {
        let t = Instant::now();
        for _ in 0..n {
            assert!(rt.block_on(web.authorize(&cfg, &headers)).is_none());
        }
        t.elapsed() / n
    };
    let t = Instant::now();
    assert!(bcrypt::verify("s3cret", &h).unwrap());
    let raw = t.elapsed();
    let first = time(1);
    let cached = time(1000);
    let line = format!(
        "bcrypt cost 10: one verification {raw:?}; first scrape {first:?} (uncached); each later \
         scrape {cached:?} (cached)\n"
    );
    eprint!("{line}");
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/bcrypt-cost.txt"),
        &line,
    )
    .unwrap();
    assert!(first >= raw / 2, "the first check runs bcrypt");
    assert!(cached * 100 < first, "later checks are cached");
}

#[test]
fn a_bad_web_config_stops_the_start() {
    let dir = TempDir::new("bad");
    for (yml, field) in [
        (
            "basic_auth_users:\n  alice: hunter2\n",
            "basic_auth_users.alice",
        ),
        (
            "tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n",
            "cert_file",
        ),
        ("tls_server_config:\n  min_versoin: TLS13\n", "min_versoin"),
        (
            "http_server_config:\n  headers:\n    Set-Cookie: a\n",
            "Set-Cookie",
        ),
    ] {
        let p = dir.write("web.yml", yml);
        let out = Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
            .arg("--config")
            .arg(dir.write("ctx.toml", ""))
            .arg("--web.config.file")
            .arg(&p)
            .arg("--check")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yml}");
        assert!(
            err.contains(field) && err.contains("web.yml"),
            "{yml}: {err}"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real daemon on `port` under `web`, once it serves over TLS.
fn start_daemon(dir: &TempDir, web: &Path, port: u16, pin_dir: &str) -> std::process::Child {
    let daemon = Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
        .args(["--pin-dir", pin_dir])
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--config")
        .arg(dir.write("ctx.toml", ""))
        .arg("--web.config.file")
        .arg(web)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("ctx.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(dir, port, &["-u", "prometheus:s3cret"]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "ctx-daemon did not serve over TLS: {}",
            std::fs::read_to_string(dir.0.join("ctx.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(200));
    }
    daemon
}

/// Debian's Prometheus scraping `port` every second over TLS with basic auth: job `ctx` with
/// the right password, `ctx-wrong-password` with a wrong one. Returns it, its port and config.
fn start_prometheus(dir: &TempDir, port: u16) -> (std::process::Child, u16, PathBuf) {
    let job = |name: &str, pass: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    basic_auth:\n      username: \
             prometheus\n      password: {pass}\n    tls_config:\n      ca_file: {ca}\n      \
             server_name: localhost\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            ca = dir.0.join("ca.pem").display()
        )
    };
    let cfg = dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
            job("ctx", "s3cret"),
            job("ctx-wrong-password", "guess")
        ),
    );
    let prom_port = free_port();
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    (prom, prom_port, cfg)
}

/// The real daemon, attached, behind TLS and basic auth; Debian's Prometheus scrapes it with
/// `scheme: https`, `basic_auth` and `tls_config`, and a job with a wrong password is refused.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let test = "prometheus_scrapes_over_tls_with_basic_auth";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip(test, "needs root to load eBPF programs");
    }
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip(
            test,
            "`prometheus` not installed (Debian package prometheus)",
        );
    }
    if !have_curl(test) {
        return;
    }
    let dir = TempDir::new("prom");
    make_pki(&dir);
    let web = dir.write(
        "web.yml",
        &format!("{TLS}basic_auth_users:\n  prometheus: {}\n", hash("s3cret")),
    );
    let port = free_port();
    let pin_dir = format!("/sys/fs/bpf/ctx-test-webtls-{}", std::process::id());
    let mut daemon = start_daemon(&dir, &web, port, &pin_dir);
    let (mut prom, prom_port, cfg) = start_prometheus(&dir, port);
    let query = |q: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-G", "--data-urlencode"])
            .arg(format!("query={q}"))
            .arg(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let value = |body: &str, job: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["data"]["result"]
            .as_array()?
            .iter()
            .find(|r| r["metric"]["job"] == job)
            .and_then(|r| r["value"][1].as_str().map(str::to_owned))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut body = String::new();
    while Instant::now() < deadline {
        body = query("up");
        if value(&body, "ctx").is_some() && value(&body, "ctx-wrong-password").is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(300));
    }
    let samples = query("scrape_samples_scraped{job=\"ctx\"}");
    let cpus = query("count(ctx_cpu_info)");
    let _ = prom.kill();
    let _ = prom.wait();
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(daemon.id().cast_signed(), libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
        .args(["--detach", "--pin-dir", &pin_dir])
        .output();
    let transcript = format!(
        "prometheus.yml:\n{}\nup: {body}\nscrape_samples_scraped{{job=\"ctx\"}}: {samples}\n\
         count(ctx_cpu_info): {cpus}\n",
        std::fs::read_to_string(&cfg).unwrap()
    );
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/prometheus-tls-scrape.txt"),
        &transcript,
    )
    .unwrap();
    eprintln!("{transcript}");
    assert_eq!(value(&body, "ctx").as_deref(), Some("1"), "{body}");
    assert_eq!(
        value(&body, "ctx-wrong-password").as_deref(),
        Some("0"),
        "{body}"
    );
    let n: f64 = value(&samples, "ctx")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(n > 10.0, "{samples}");
}
