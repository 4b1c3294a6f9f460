//! Policy: the compiled [`Snapshot`] and the pure [`evaluate`] decision.

pub mod conditions;
pub mod decision;
pub mod path;
pub mod route;
pub mod snapshot;

pub use decision::{effective_scopes, evaluate, Allowed, Decision, Denial, RequestFacts};
pub use path::{normalize, NormalizedPath, PathError};
pub use route::{HostPattern, Lookup, PathPattern, Route, RouteTable, Segment};
pub use snapshot::{
    AccessLogTarget, Agent, ApprovalMode, ApprovalPolicy, ApprovalSettings, Approver,
    ConnectionLimits, Credential, Secret, Settings, Snapshot, TokenService, Upstream,
    WebhookSettings,
};
pub use snapshot::{AdminSettings, AdminToken, MetricsAccess};
