//! The HTTP side: `GET /metrics`, `GET /healthz` and a landing page at `/`. Handlers only read the latest published
//! snapshot; nothing here touches the kernel, so concurrent scrapes are cheap and consistent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::compression::CompressionLayer;

use crate::host::system::mono_now_ns;
use crate::outputs::metrics::{self, ExportStatic, ExportView};
use crate::outputs::webconfig::WebConfig;

/// State shared by the sampler (writer) and the HTTP handlers (readers).
pub struct Shared {
    view: Mutex<Arc<ExportView>>,
    pub stat: ExportStatic,
    /// `CLOCK_MONOTONIC` of the newest successful sweep.
    last_sample_mono: AtomicU64,
    /// A sweep older than this makes the sampler stale.
    pub max_age_ns: u64,
    /// Pinned maps and links whose presence proves the programs are still attached and write
    /// the maps read here (checked on every `/healthz`).
    pub links: Vec<PathBuf>,
}

impl Shared {
    pub fn new(stat: ExportStatic, view: ExportView, max_age_ns: u64, links: Vec<PathBuf>) -> Self {
        Self {
            view: Mutex::new(Arc::new(view)),
            stat,
            last_sample_mono: AtomicU64::new(mono_now_ns()),
            max_age_ns,
            links,
        }
    }

    pub fn publish(&self, view: ExportView, sampled_at_mono: u64) {
        let v = Arc::new(view);
        match self.view.lock() {
            Ok(mut g) => *g = v,
            Err(p) => *p.into_inner() = v,
        }
        self.last_sample_mono
            .store(sampled_at_mono, Ordering::Release);
    }

    /// The snapshot a scrape works from, with freshness evaluated now.
    pub fn view(&self) -> ExportView {
        let v = match self.view.lock() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        };
        let mut v = (*v).clone();
        v.sampler_up = self.fresh();
        v
    }

    pub fn fresh(&self) -> bool {
        let last = self.last_sample_mono.load(Ordering::Acquire);
        mono_now_ns().saturating_sub(last) <= self.max_age_ns
    }

    /// Why the daemon is unhealthy, if it is.
    pub fn unhealthy(&self) -> Option<String> {
        if !self.fresh() {
            return Some("sampler stale: no sweep within the last second".into());
        }
        if let Some(why) = self.stat.pins.as_ref().and_then(|p| p.problem()) {
            return Some(format!("pins broken: {why}"));
        }
        let gone: Vec<String> = self
            .links
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        (!gone.is_empty()).then(|| {
            format!(
                "pins gone (programs detached or maps orphaned): {} missing; the daemon pins \
                 them again within seconds when it can (ctx_pins_ok), else restart ctx-daemon",
                gone.join(", ")
            )
        })
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    match metrics::text(&s.stat, &s.view()) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match s.unhealthy() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// The default of `--web.telemetry-path`.
pub const DEFAULT_TELEMETRY_PATH: &str = "/metrics";

/// A tiny page at `/` for whoever opens the address in a browser, as exporters have.
fn landing_page(telemetry_path: &str) -> String {
    // The path is checked at start to be a plain `/segment` path, so it needs no escaping
    // beyond what it already cannot contain.
    format!(
        "<!DOCTYPE html>\n<html><head><title>ctx</title></head><body>\n<h1>ctx {v}</h1>\n\
         <p>Per-CPU context-tracking exporter for nohz_full hosts.</p>\n<ul>\n\
         <li><a href=\"{telemetry_path}\">{telemetry_path}</a>: metrics</li>\n\
         <li><a href=\"/healthz\">/healthz</a>: health</li>\n</ul>\n</body></html>\n",
        v = crate::VERSION
    )
}

/// `/metrics` (gzip when asked), `/healthz` and `/`; other paths 404, other methods 405.
pub fn router(shared: Arc<Shared>) -> Router {
    router_at(shared, DEFAULT_TELEMETRY_PATH)
}

/// [`router`] with the metrics at `telemetry_path` (`--web.telemetry-path`).
pub fn router_at(shared: Arc<Shared>, telemetry_path: &str) -> Router {
    let page = landing_page(telemetry_path);
    Router::new()
        .route(telemetry_path, get(metrics))
        .route("/healthz", get(healthz))
        .route(
            "/",
            get(
                move || async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page) },
            ),
        )
        .layer(CompressionLayer::new().gzip(true))
        .with_state(shared)
}

/// What one client may hold. Connections are capped below the unit's `LimitNOFILE` (4096), so
/// a flood of idle sockets cannot take the descriptors a real scrape needs; requests in flight
/// are capped like the Prometheus node exporter's `--web.max-requests`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_requests: usize,
    /// A client must send a whole request head within this; it also ends idle keep-alive
    /// connections, since hyper arms it whenever it waits for the next request head.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 3072,
            max_requests: 512,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Raises the soft open-file limit to the hard one (as Go programs do at start) and keeps
    /// the connection cap below it, with room for the daemon's own descriptors: past the limit
    /// `accept` fails and every client, real or not, times out.
    #[must_use]
    pub fn fit_to_fd_limit(mut self) -> Self {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointer to a rlimit; RLIMIT_NOFILE is a valid resource.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut rl) } != 0 {
            return self;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        let room = usize::try_from(rl.rlim_cur.saturating_sub(128)).unwrap_or(usize::MAX);
        if self.max_connections > room {
            tracing::warn!(
                asked = self.max_connections,
                kept = room.max(1),
                "connection cap lowered to fit the open-file limit (LimitNOFILE)"
            );
            self.max_connections = room.max(1);
        }
        self
    }
}

/// Says "refused" at most once per interval, with how many were refused since.
struct Refusals {
    count: AtomicU64,
    last_log_mono: AtomicU64,
}

impl Refusals {
    const EVERY_NS: u64 = 10_000_000_000;

    fn note(&self, what: &str, limit: usize) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = mono_now_ns();
        let last = self.last_log_mono.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= Self::EVERY_NS)
            && self
                .last_log_mono
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
            tracing::warn!(
                refused = n,
                limit,
                "{what} at the limit: refusing clients (503); raise --web.max-connections or \
                 --web.max-requests if these are real scrapers"
            );
        }
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
    Content-Type: text/plain\r\nContent-Length: 22\r\n\r\ntoo many connections\r\n";

/// Serves `app` on `listener` until `shutdown` completes. Open connections are not waited for:
/// the caller drops the runtime, which ends them (SIGTERM must stop the daemon promptly).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listener,
        app,
        limits,
        Arc::new(WebConfig::plain()),
        shutdown,
    )
    .await;
}

/// [`serve`] under a web configuration (TLS, basic auth, headers: `--web.config.file`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    web: Arc<WebConfig>,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::rt::TokioTimer;
    use tokio::sync::Semaphore;
    use tower::ServiceExt as _;

    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let reqs = Arc::new(Semaphore::new(limits.max_requests));
    let refused = Arc::new(Refusals {
        count: AtomicU64::new(0),
        last_log_mono: AtomicU64::new(0),
    });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning on a full table.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else {
            refused.note("connections", limits.max_connections);
            // A fresh socket's send buffer takes this whole; never wait on the client.
            let _ = stream.try_write(BUSY);
            drop(stream);
            continue;
        };
        let app = app.clone();
        let reqs = Arc::clone(&reqs);
        let refused = Arc::clone(&refused);
        let max_requests = limits.max_requests;
        let tls = web.current().tls.clone();
        let web = Arc::clone(&web);
        let svc = hyper::service::service_fn(move |req: axum::http::Request<_>| {
            let app = app.clone();
            let reqs = Arc::clone(&reqs);
            let refused = Arc::clone(&refused);
            let web = Arc::clone(&web);
            async move {
                let Ok(_p) = reqs.try_acquire_owned() else {
                    refused.note("requests", max_requests);
                    return Ok::<_, std::convert::Infallible>(
                        (StatusCode::SERVICE_UNAVAILABLE, "too many requests\n").into_response(),
                    );
                };
                // Under the request cap: a bcrypt check costs tens of milliseconds.
                let cfg = web.current();
                if let Some(denied) = web.authorize(&cfg, req.headers()).await {
                    return Ok(cfg.decorate(denied));
                }
                let Ok(resp) = app.oneshot(req.map(axum::body::Body::new)).await;
                Ok(cfg.decorate(resp))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let handshake = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            crate::outputs::tls::serve_connection(stream, tls, builder, svc, handshake).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    fn shared(max_age_ns: u64, links: Vec<PathBuf>) -> Arc<Shared> {
        let (st, v) = crate::outputs::metrics::tests::fixture();
        Arc::new(Shared::new(st, v, max_age_ns, links))
    }

    /// A plain GET of `path`.
    async fn get_path(s: &Arc<Shared>, path: &str) -> (StatusCode, String) {
        let (st, body, _) = get(s, Request::get(path).body(Body::empty()).unwrap()).await;
        (st, String::from_utf8(body).unwrap())
    }

    async fn get(s: &Arc<Shared>, req: Request<Body>) -> (StatusCode, Vec<u8>, Option<String>) {
        let r = router(Arc::clone(s)).oneshot(req).await.unwrap();
        let status = r.status();
        let enc = r
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, body, enc)
    }

    #[tokio::test]
    async fn routes() {
        let s = shared(u64::MAX, vec![]);
        let (st, text) = get_path(&s, "/metrics").await;
        assert_eq!(st, StatusCode::OK);
        assert!(text.contains("ctx_cpu_seconds_total{cpu=\"1\",state=\"user\"}"));
        assert!(text.contains("ctx_sampler_up 1"));

        let (st, body, enc) = get(
            &s,
            Request::get("/metrics")
                .header(header::ACCEPT_ENCODING, "gzip")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(enc.as_deref(), Some("gzip"));
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, text);

        assert_eq!(get_path(&s, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get_path(&s, "/nope").await.0, StatusCode::NOT_FOUND);
        let (st, ..) = get(&s, Request::post("/metrics").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn landing_page_follows_the_telemetry_path() {
        let s = shared(u64::MAX, vec![]);
        let app = router_at(Arc::clone(&s), "/ctx/metrics");
        let r = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = r.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8_lossy(&page);
        assert!(page.contains("href=\"/ctx/metrics\""), "{page}");
        assert!(page.contains("href=\"/healthz\""), "{page}");
        assert!(page.contains(crate::VERSION), "{page}");
        assert!(page.len() < 1024, "keep it tiny");
        for (path, want) in [
            ("/ctx/metrics", StatusCode::OK),
            ("/metrics", StatusCode::NOT_FOUND),
        ] {
            let r = app
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), want, "{path}");
        }
    }

    #[tokio::test]
    async fn health_follows_freshness_and_links() {
        let s = shared(0, vec![]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (st, body) = get_path(&s, "/healthz").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("stale"), "{body}");
        assert!(
            get_path(&s, "/metrics")
                .await
                .1
                .contains("ctx_sampler_up 0")
        );

        let s = shared(u64::MAX, vec![PathBuf::from("/nonexistent/ctx/link")]);
        let (st, body) = get_path(&s, "/healthz").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("detached"), "{body}");
    }

    #[tokio::test]
    async fn health_and_metrics_follow_the_pin_check() {
        let (mut st, v) = crate::outputs::metrics::tests::fixture();
        let pins = Arc::new(crate::daemon::pinwatch::PinHealth::default());
        st.pins = Some(Arc::clone(&pins));
        let s = Arc::new(Shared::new(st, v, u64::MAX, vec![]));
        assert!(get_path(&s, "/metrics").await.1.contains("ctx_pins_ok 1"));
        pins.set(Some(
            "maps/CTX_CPU was replaced and pinning it again failed".into(),
        ));
        let (code, body) = get_path(&s, "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("pins broken") && body.contains("CTX_CPU"),
            "{body}"
        );
        assert!(get_path(&s, "/metrics").await.1.contains("ctx_pins_ok 0"));
        pins.set(None);
        assert_eq!(get_path(&s, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn connection_cap_and_header_timeout() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            max_requests: 1,
            header_read_timeout: Duration::from_millis(300),
        };
        tokio::spawn(serve(
            l,
            router(shared(u64::MAX, vec![])),
            limits,
            std::future::pending(),
        ));
        // A slowloris holds the only slot...
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...so the next client is refused at once, not left waiting.
        let got = exchange(addr, b"").await;
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        // The header-read timeout (hyper has a timer) closes the slowloris and frees the slot.
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "slowloris not closed");
        let got = exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }

    /// Connects, sends `req`, and reads until the server closes.
    async fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(req).await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }
}
