//! How a call ended, as one typed value.
//!
//! The proxy sets it where the call is decided or fails; metrics and the access-log line read
//! it once, in `logging`. No phase assigns decision or reason strings of its own, so the two
//! cannot disagree and a new kind of ending is a new variant the compiler makes every reader
//! handle.

/// The end of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was decided: the call was cut off before its decision (shutdown, a client that
    /// went away before its headers were read).
    Undecided,
    /// Forwarded to the upstream, which answered.
    Allowed,
    /// Shadow mode: forwarded and answered, though a shadowed policy would have refused it
    /// with `would_deny`.
    ShadowDenied {
        /// The code the refusal would have had.
        would_deny: &'static str,
    },
    /// Refused by the gateway; `code` is the refusal's machine code.
    Denied {
        /// The `error` code of the refusal.
        code: &'static str,
    },
    /// Parked for a human decision (async approvals answer 202).
    Held,
    /// Allowed and forwarded, but the upstream failed or broke its answer.
    UpstreamError {
        /// `upstream_unavailable`, `upstream_timeout` or `upstream_error`.
        code: &'static str,
    },
    /// The gateway, or the client, failed the call (`code` says which and how).
    Error {
        /// A refusal code (5xx) or `client_error`, `aborted`, `approval_abandoned`.
        code: &'static str,
    },
}

impl Outcome {
    /// The `decision` of the access log and of `portcullis_requests_total`: `allow`, `deny`,
    /// `held` or `error` (an upstream failure is an `error` of an allowed call).
    pub fn decision(&self) -> &'static str {
        match self {
            Outcome::Allowed | Outcome::ShadowDenied { .. } => "allow",
            Outcome::Denied { .. } => "deny",
            Outcome::Held => "held",
            Outcome::Undecided | Outcome::UpstreamError { .. } | Outcome::Error { .. } => "error",
        }
    }

    /// The `reason` of the access log: the machine code, when there is one.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Denied { code }
            | Outcome::UpstreamError { code }
            | Outcome::Error { code } => Some(code),
            Outcome::Held => Some("approval_pending"),
            Outcome::Undecided => Some("aborted"),
            Outcome::Allowed | Outcome::ShadowDenied { .. } => None,
        }
    }

    /// What a shadowed policy would have refused (the access log's `would_deny`).
    pub fn would_deny(&self) -> Option<&'static str> {
        match self {
            Outcome::ShadowDenied { would_deny } => Some(would_deny),
            Outcome::Undecided
            | Outcome::Allowed
            | Outcome::Denied { .. }
            | Outcome::Held
            | Outcome::UpstreamError { .. }
            | Outcome::Error { .. } => None,
        }
    }

    /// Whether the call reached the upstream (the access log then names it).
    pub fn reached_upstream(&self) -> bool {
        matches!(
            self,
            Outcome::Allowed | Outcome::ShadowDenied { .. } | Outcome::UpstreamError { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_one_decision_and_reason() {
        let cases = [
            (Outcome::Allowed, "allow", None, true),
            (
                Outcome::ShadowDenied {
                    would_deny: "insufficient_scope",
                },
                "allow",
                None,
                true,
            ),
            (
                Outcome::Denied { code: "no_route" },
                "deny",
                Some("no_route"),
                false,
            ),
            (Outcome::Held, "held", Some("approval_pending"), false),
            (
                Outcome::UpstreamError {
                    code: "upstream_timeout",
                },
                "error",
                Some("upstream_timeout"),
                true,
            ),
            (
                Outcome::Error {
                    code: "client_error",
                },
                "error",
                Some("client_error"),
                false,
            ),
            (Outcome::Undecided, "error", Some("aborted"), false),
        ];
        for (o, decision, reason, upstream) in cases {
            assert_eq!(
                (o.decision(), o.reason(), o.reached_upstream()),
                (decision, reason, upstream),
                "{o:?}"
            );
        }
    }
}
