//! Observability: the JSON access log and Prometheus metrics.

pub mod access_log;
pub mod metrics;

pub use access_log::{AccessLog, AccessRecord, LogTime};
pub use metrics::Metrics;
