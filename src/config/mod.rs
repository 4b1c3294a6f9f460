//! Configuration: raw YAML structs ([`raw`]), parsing that gathers every error ([`parse`]),
//! and the compile step into the immutable [`crate::policy::Snapshot`] ([`compile`]).

pub mod compile;
pub mod compile_conditions;
pub mod compile_limits;
pub mod compile_monitoring;
pub mod error;
pub mod locate;
pub mod parse;
pub mod policy_digest;
pub mod raw;
pub mod raw_conditions;
pub mod raw_limits;
pub mod raw_monitoring;
pub mod secret;

pub use compile::{load_file, load_str, LoadContext};
pub use error::{ConfigError, Issue, IssueKind};
