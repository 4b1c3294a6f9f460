//! Compiling `approvals:` and the approval rules of routes.

use super::*;

impl Compiler<'_> {
    /// Compile an approval policy; `approvals` is the section it draws approvers from.
    pub(super) fn approval_policy(
        &mut self,
        p: &str,
        r: &RawApprovalPolicy,
        approvals: Option<&ApprovalSettings>,
        default_timeout: Duration,
    ) -> Option<ApprovalPolicy> {
        let Some(settings) = approvals else {
            self.invalid(p, "needs an `approvals:` section (store and approvers)");
            return None;
        };
        let mode = match r.mode.as_deref() {
            None | Some("hold") => ApprovalMode::Hold,
            Some("async") => ApprovalMode::Async,
            Some(other) => {
                self.invalid(
                    format!("{p}.mode"),
                    format!("`{other}` is not `hold` or `async`"),
                );
                ApprovalMode::Hold
            }
        };
        let timeout = self.duration(&format!("{p}.timeout"), &r.timeout, default_timeout);
        let known: Vec<&str> = settings.approvers.iter().map(|a| a.name.as_str()).collect();
        // IdP approvers are mapped onto these names when they sign in, so every approver a
        // route names must be one of them, with or without `jwt_approvers`.
        for (j, a) in r.approvers.iter().enumerate() {
            if !known.contains(&a.as_str()) {
                self.err(
                    format!("{p}.approvers[{j}]"),
                    IssueKind::UnknownReference {
                        what: "approver",
                        name: a.clone(),
                        hint: hint(&known),
                    },
                );
            }
        }
        let quorum = r.quorum.unwrap_or(1);
        let eligible = if r.approvers.is_empty() {
            known.len()
        } else {
            r.approvers.len()
        };
        if quorum == 0 {
            self.invalid(format!("{p}.quorum"), "must be at least 1");
        } else if quorum as usize > eligible {
            self.invalid(
                format!("{p}.quorum"),
                format!("{quorum} distinct approvals can never be reached: only {eligible} approver(s) may decide"),
            );
        }
        Some(ApprovalPolicy {
            mode,
            timeout,
            approvers: r.approvers.clone(),
            quorum,
        })
    }

    pub(super) fn approvals(
        &mut self,
        r: &RawApprovals,
        admin_listen: &str,
        issuers: &[(usize, RawIssuer)],
        raw_backend_shared: bool,
    ) -> ApprovalSettings {
        let p = "approvals";
        // One person, one vote: an IdP name must lead to exactly one configured approver.
        self.unique(
            "approver",
            r.approvers.iter().enumerate().flat_map(|(i, a)| {
                std::iter::once((format!("{p}.approvers[{i}].name"), a.name.as_str())).chain(
                    a.idp_names.iter().enumerate().map(move |(j, n)| {
                        (format!("{p}.approvers[{i}].idp_names[{j}]"), n.as_str())
                    }),
                )
            }),
        );
        let mut approvers = Vec::new();
        for (i, a) in r.approvers.iter().enumerate() {
            if !a.idp_names.is_empty() && r.jwt_approvers.is_none() {
                self.invalid(
                    format!("{p}.approvers[{i}].idp_names"),
                    "only means something with `approvals.jwt_approvers`",
                );
            }
            let Some(raw_hash) = &a.token_sha256 else {
                if r.jwt_approvers.is_none() {
                    self.invalid(
                        format!("{p}.approvers[{i}].token_sha256"),
                        "required unless `jwt_approvers` is set: without it this approver could never sign in",
                    );
                }
                approvers.push(Approver {
                    name: a.name.clone(),
                    token_sha256: None,
                    idp_names: a.idp_names.clone(),
                });
                continue;
            };
            let mut h = [0u8; 32];
            let hex_text = match secret::resolve(raw_hash, &self.base) {
                Ok(t) => t,
                Err(e) => {
                    self.invalid(format!("{p}.approvers[{i}].token_sha256"), e);
                    continue;
                }
            };
            match hex::decode_to_slice(hex_text.trim(), &mut h) {
                Ok(()) => approvers.push(Approver {
                    name: a.name.clone(),
                    token_sha256: Some(h),
                    idp_names: a.idp_names.clone(),
                }),
                Err(_) => self.invalid(
                    format!("{p}.approvers[{i}].token_sha256"),
                    "must be 64 hex digits (the SHA-256 of the approver's token; `portcullis approver-token` prints one)",
                ),
            }
        }
        let jwt_approvers = r.jwt_approvers.as_ref().and_then(|j| {
            let names: Vec<&str> = issuers.iter().map(|(_, i)| i.name.as_str()).collect();
            if !names.contains(&j.issuer.as_str()) {
                self.err(
                    format!("{p}.jwt_approvers.issuer"),
                    IssueKind::UnknownReference {
                        what: "issuer",
                        name: j.issuer.clone(),
                        hint: hint(&names),
                    },
                );
                return None;
            }
            if j.claim.trim().is_empty() {
                self.invalid(format!("{p}.jwt_approvers.claim"), "must not be empty");
                return None;
            }
            Some((j.issuer.clone(), j.claim.trim().to_string()))
        });
        if r.approvers.is_empty() {
            self.invalid(
                format!("{p}.approvers"),
                "list at least one approver: held calls could never be decided (IdP approvers, too, must be listed, by `name` or `idp_names`, so that one person counts once toward a quorum)",
            );
        }
        let limits = self.approval_limits(r);
        let max_body_bytes = r.max_body_bytes.unwrap_or(1024 * 1024);
        if max_body_bytes == 0 {
            self.invalid(format!("{p}.max_body_bytes"), "must be at least 1");
        }
        let webhook = r
            .webhook
            .as_ref()
            .map(|w| self.webhook(&format!("{p}.webhook"), w));
        let mut settings = ApprovalSettings {
            store_path: match (&r.store, raw_backend_shared) {
                (Some(store), _) => self.file_path(store),
                // Shared: PostgreSQL (state.postgres); an empty path marks it.
                (None, true) => PathBuf::new(),
                (None, false) => {
                    self.invalid(
                        format!("{p}.store"),
                        "needs the SQLite file approvals are kept in (e.g. `.portcullis/approvals.db`)",
                    );
                    PathBuf::new()
                }
            },
            max_body_bytes,
            console_url: r
                .console_url
                .clone()
                .unwrap_or_else(|| default_console_url(admin_listen))
                .trim_end_matches('/')
                .to_string(),
            approvers,
            webhook,
            jwt_approvers,
            limits,
            supervised: Arc::new(ApprovalPolicy {
                mode: ApprovalMode::Async,
                timeout: Duration::from_secs(1800),
                approvers: Vec::new(),
                quorum: 1,
            }),
        };
        let sup = r.supervised.clone().unwrap_or(RawApprovalPolicy {
            mode: Some("async".into()),
            ..Default::default()
        });
        if let Some(pol) = self.approval_policy(
            &format!("{p}.supervised"),
            &sup,
            Some(&settings),
            Duration::from_secs(1800),
        ) {
            settings.supervised = Arc::new(pol);
        }
        settings
    }

    /// `approvals.max_*` and `retention`: what one agent may make the gateway keep.
    pub(super) fn approval_limits(&mut self, r: &RawApprovals) -> ApprovalLimits {
        let p = "approvals";
        let d = ApprovalLimits::default();
        let mut at_least_one = |field: &str, v: Option<u64>, default: u64| match v {
            Some(0) => {
                self.invalid(format!("{p}.{field}"), "must be at least 1");
                default
            }
            Some(n) => n,
            None => default,
        };
        let max_pending_per_agent = at_least_one(
            "max_pending_per_agent",
            r.max_pending_per_agent.map(u64::from),
            d.max_pending_per_agent.into(),
        ) as u32;
        let max_held_per_agent = at_least_one(
            "max_held_per_agent",
            r.max_held_per_agent.map(u64::from),
            d.max_held_per_agent.into(),
        ) as u32;
        let max_headers = at_least_one(
            "max_headers",
            r.max_headers.map(u64::from),
            d.max_headers.into(),
        ) as u32;
        let max_header_bytes =
            at_least_one("max_header_bytes", r.max_header_bytes, d.max_header_bytes);
        let retention = self.duration(&format!("{p}.retention"), &r.retention, d.retention);
        ApprovalLimits {
            max_pending_per_agent,
            max_held_per_agent,
            max_headers,
            max_header_bytes,
            retention,
        }
    }
}

/// `http://<admin>/console`; a wildcard bind (0.0.0.0, [::]) is no address a person can open,
/// so links then point at loopback (set `approvals.console_url` for links that work elsewhere).
pub(super) fn default_console_url(admin_listen: &str) -> String {
    let addr = match admin_listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let lo: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(lo, a.port()).to_string()
        }
        _ => admin_listen.to_string(),
    };
    format!("http://{addr}/console")
}

impl Compiler<'_> {
    /// A webhook (of approvals or alerts): an http(s) URL, headers with secrets resolved.
    pub(super) fn webhook(&mut self, wp: &str, w: &RawWebhook) -> WebhookSettings {
        match w.url.parse::<Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http") | Some("https")) => {}
            _ => self.invalid(
                format!("{wp}.url"),
                format!("`{}` is not an http(s) URL", w.url),
            ),
        }
        let mut headers = Vec::new();
        for (k, v) in &w.headers {
            match secret::resolve(v, &self.base) {
                Ok(v) => headers.push((k.clone(), v)),
                Err(e) => self.invalid(format!("{wp}.headers.{k}"), e),
            }
        }
        WebhookSettings {
            url: w.url.clone(),
            timeout: self.duration(&format!("{wp}.timeout"), &w.timeout, Duration::from_secs(5)),
            max_attempts: w.max_attempts.unwrap_or(5).max(1),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::default_console_url;

    #[test]
    fn console_links_never_point_at_a_wildcard_address() {
        assert_eq!(
            default_console_url("10.1.2.3:9901"),
            "http://10.1.2.3:9901/console"
        );
        assert_eq!(
            default_console_url("0.0.0.0:9901"),
            "http://127.0.0.1:9901/console"
        );
        assert_eq!(
            default_console_url("[::]:9901"),
            "http://[::1]:9901/console"
        );
    }
}
