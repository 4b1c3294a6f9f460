//! Compiling the `admin:` section.

use super::*;

impl Compiler<'_> {
    pub(super) fn admin(&mut self, r: &RawAdmin) -> AdminSettings {
        let p = "admin";
        self.unique(
            "admin token",
            r.tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("{p}.tokens[{i}].name"), t.name.as_str())),
        );
        let tokens = r
            .tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let token_sha256 =
                    self.sha256_hex(&format!("{p}.tokens[{i}].token_sha256"), &t.token_sha256)?;
                Some(AdminToken {
                    name: t.name.clone(),
                    token_sha256,
                })
            })
            .collect::<Vec<_>>();
        let mut hosts = Vec::new();
        for (i, h) in r.hosts.iter().enumerate() {
            let host = h.trim().to_ascii_lowercase();
            // A bare authority: what a client puts in `Host`, nothing more.
            let valid = !host.is_empty()
                && !host.contains(['/', '@', '*', '?', '#', ' '])
                && host.parse::<http::uri::Authority>().is_ok();
            if valid {
                hosts.push(host);
            } else {
                self.invalid(
                    format!("{p}.hosts[{i}]"),
                    format!("`{h}` is not a host name or `host:port` (no scheme, path or wildcard), e.g. `portcullis-admin.internal`"),
                );
            }
        }
        let metrics = match r.metrics.as_deref() {
            None | Some("open") => MetricsAccess::Open,
            Some("token") => MetricsAccess::Token,
            Some(other) => {
                self.invalid(
                    format!("{p}.metrics"),
                    format!("`{other}` is not `open` or `token`"),
                );
                MetricsAccess::Open
            }
        };
        let metrics_token_sha256 = r
            .metrics_token_sha256
            .as_ref()
            .and_then(|h| self.sha256_hex(&format!("{p}.metrics_token_sha256"), h));
        if r.metrics_token_sha256.is_some() && metrics != MetricsAccess::Token {
            self.invalid(
                format!("{p}.metrics_token_sha256"),
                "only used with `metrics: token`; set it, or remove this token",
            );
        }
        if metrics == MetricsAccess::Token
            && r.tokens.is_empty()
            && r.metrics_token_sha256.is_none()
        {
            self.invalid(
                format!("{p}.metrics"),
                "`token` needs `admin.tokens` or `admin.metrics_token_sha256`: nobody could read /metrics",
            );
        }
        AdminSettings {
            tokens,
            hosts,
            metrics,
            metrics_token_sha256,
        }
    }
}
