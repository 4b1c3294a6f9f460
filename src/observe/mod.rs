//! Observability: the JSON access log, Prometheus metrics, the one typed outcome of a call
//! that both are made from, monitoring (anomaly detectors, playbooks, alerts) and OpenTelemetry
//! traces.

pub mod access_line;
pub mod access_log;
pub mod alert;
pub mod anomaly;
pub mod ecs;
pub mod metrics;
pub mod monitor;
pub mod outcome;
pub mod syslog;
pub mod trace;

pub use access_log::{AccessLog, AccessRecord, LogTime};
pub use metrics::Metrics;
pub use outcome::Outcome;
