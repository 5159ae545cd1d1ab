//! The HTTP side: `GET /metrics` and `GET /healthz`. Handlers only read the latest published
//! snapshot; nothing here touches the kernel, so concurrent scrapes are cheap and consistent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::compression::CompressionLayer;

use crate::host::system::mono_now_ns;
use crate::outputs::metrics::{self, ExportStatic, ExportView};

/// State shared by the sampler (writer) and the HTTP handlers (readers).
pub struct Shared {
    view: Mutex<Arc<ExportView>>,
    pub stat: ExportStatic,
    /// `CLOCK_MONOTONIC` of the newest successful sweep.
    last_sample_mono: AtomicU64,
    /// A sweep older than this makes the sampler stale.
    pub max_age_ns: u64,
    /// Pinned links whose presence proves the programs are still attached.
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
        let gone: Vec<String> = self
            .links
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        (!gone.is_empty()).then(|| format!("programs detached: {} missing", gone.join(", ")))
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

/// `/metrics` (gzip when asked) and `/healthz`; other paths 404, other methods 405.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(CompressionLayer::new().gzip(true))
        .with_state(shared)
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
        let (st, body, enc) = get(&s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(enc, None);
        let text = String::from_utf8(body).unwrap();
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

        let (st, ..) = get(&s, Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::OK);
        let (st, ..) = get(&s, Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, ..) = get(&s, Request::post("/metrics").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn health_follows_freshness_and_links() {
        let s = shared(0, vec![]);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (st, body, _) = get(&s, Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8_lossy(&body).contains("stale"));
        let (_, body, _) = get(&s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
        assert!(String::from_utf8_lossy(&body).contains("ctx_sampler_up 0"));

        let s = shared(u64::MAX, vec![PathBuf::from("/nonexistent/ctx/link")]);
        let (st, body, _) = get(&s, Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(String::from_utf8_lossy(&body).contains("detached"));
    }
}
