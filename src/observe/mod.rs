//! Observability: the JSON access log, Prometheus metrics, and the one typed outcome of a call
//! that both are made from.

pub mod access_log;
pub mod anomaly;
pub mod metrics;
pub mod outcome;

pub use access_log::{AccessLog, AccessRecord, LogTime};
pub use metrics::Metrics;
pub use outcome::Outcome;
