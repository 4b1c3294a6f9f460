//! Policy: the compiled [`Snapshot`] and the pure [`evaluate`] decision, a pipeline of one
//! file per policy (`agents`, `routing`, `upgrade`, `scopes`, `approval`) in the order
//! `pipeline.rs` gives.

pub mod agent_state;
pub mod agents;
pub mod approval;
pub mod conditions;
pub mod decision;
pub mod limits;
pub mod mcp;
pub mod path;
pub mod pipeline;
pub mod route;
pub mod routing;
pub mod scopes;
pub mod snapshot;
pub mod upgrade;

pub use decision::{Allowed, Decision, Denial, RequestFacts};
pub use path::{normalize, NormalizedPath, PathError};
pub use pipeline::evaluate;
pub use route::{HostPattern, Lookup, PathPattern, Route, RouteTable, Segment, Shadow};
pub use scopes::effective_scopes;
pub use snapshot::{
    AccessLogTarget, Agent, ApprovalMode, ApprovalPolicy, ApprovalSettings, Approver,
    ConnectionLimits, Credential, Secret, Settings, Snapshot, TokenService, Upstream,
    WebhookSettings,
};
pub use snapshot::{AdminSettings, AdminToken, MetricsAccess};
