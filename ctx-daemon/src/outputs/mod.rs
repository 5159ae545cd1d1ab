//! The fourth stage: what the model holds, rendered for each reader. (The full-screen view,
//! the fifth reader, has its own folder: [`crate::tui`].)
//!
//! * [`metrics`]: every Prometheus metric, described once with how it renders from the model,
//!   and the exposition.
//! * [`serve`]: `GET /metrics` and `GET /healthz`, from the latest published snapshot, and a
//!   landing page at `/`.
//! * [`webconfig`] and [`tls`]: `--web.config.file`, the exporter toolkit's TLS, basic auth and
//!   headers.
//! * [`report`]: one interval as the `ctxtop --once` table or its JSON.

pub mod metrics;
pub mod report;
pub mod serve;
pub mod tls;
pub mod webconfig;
