//! Compiling `listen:`, `server:` and `access_log:`: process settings and connection limits.

use super::*;

impl Compiler<'_> {
    pub(super) fn listen_addr(&mut self, path: &str, a: &str) {
        if a.parse::<SocketAddr>().is_err() {
            self.invalid(
                path,
                format!("`{a}` is not an `ip:port` address (e.g. `127.0.0.1:8080`)"),
            );
        }
    }

    pub(super) fn settings(&mut self, raw: &RawConfig) -> Settings {
        let l = &raw.listen;
        let proxy_listen = if l.proxy.is_empty() {
            vec!["127.0.0.1:8080".to_string()]
        } else {
            l.proxy.clone()
        };
        for (i, a) in proxy_listen.iter().enumerate() {
            if !l.proxy.is_empty() {
                self.listen_addr(&format!("listen.proxy[{i}]"), a);
            }
        }
        let admin_listen = l.admin.clone().unwrap_or_else(|| DEFAULT_ADMIN.into());
        self.listen_addr("listen.admin", &admin_listen);
        if proxy_listen.contains(&admin_listen) {
            self.invalid(
                "listen.admin",
                "the admin listener must differ from the proxy listener",
            );
        }
        let threads = l.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if threads == 0 {
            self.invalid("listen.threads", "must be at least 1");
        }
        let s = &raw.server;
        let max_path_length = s.max_path_length.unwrap_or(4096);
        if max_path_length < 16 {
            self.invalid("server.max_path_length", "must be at least 16");
        }
        let access_log = match raw.access_log.path.as_deref() {
            None | Some("stdout") | Some("-") => AccessLogTarget::Stdout,
            Some(p) => AccessLogTarget::File(self.file_path(p)),
        };
        let access_log_max_field_bytes = raw
            .access_log
            .max_field_bytes
            .unwrap_or(crate::observe::access_log::DEFAULT_MAX_FIELD_BYTES);
        if access_log_max_field_bytes < MIN_LOG_FIELD_BYTES {
            self.invalid(
                "access_log.max_field_bytes",
                format!("must be at least {MIN_LOG_FIELD_BYTES}"),
            );
        }
        Settings {
            proxy_listen,
            admin_listen,
            threads: threads.max(1),
            grace_period: self.duration(
                "server.grace_period",
                &s.grace_period,
                Duration::from_secs(10),
            ),
            max_path_length,
            watch_config: s.watch_config.unwrap_or(true),
            upstream_keepalive_pool: s.upstream_keepalive_pool.unwrap_or(128),
            // With one worker there is nobody to steal from: a current-thread runtime does the
            // same work without the multi-thread scheduler's cross-thread bookkeeping (~20% more
            // requests per second measured here), and pingora's pooled-connection handoff cannot
            // race across threads.
            work_stealing: s.work_stealing.unwrap_or(threads > 1),
            access_log,
            state_store: self
                .file_path(raw.state.store.as_deref().unwrap_or(".portcullis/state.db")),
            connections: self.connection_limits(s),
            trusted_proxies: s
                .trusted_proxies
                .iter()
                .enumerate()
                .filter_map(|(j, c)| match c.trim().parse::<ipnet::IpNet>() {
                    Ok(n) => Some(n),
                    Err(e) => {
                        self.invalid(
                            format!("server.trusted_proxies[{j}]"),
                            format!("`{c}` is not a CIDR such as 10.0.0.0/8: {e}"),
                        );
                        None
                    }
                })
                .collect(),
            access_log_max_field_bytes,
        }
    }

    pub(super) fn connection_limits(&mut self, s: &RawServer) -> ConnectionLimits {
        let d = ConnectionLimits::default();
        let limits = ConnectionLimits {
            request_header_timeout: self.duration(
                "server.request_header_timeout",
                &s.request_header_timeout,
                d.request_header_timeout,
            ),
            keepalive_timeout: self.duration(
                "server.keepalive_timeout",
                &s.keepalive_timeout,
                d.keepalive_timeout,
            ),
            max_connections: s.max_connections.unwrap_or(d.max_connections),
            max_connections_per_client: s
                .max_connections_per_client
                .unwrap_or(d.max_connections_per_client),
        };
        if limits.keepalive_timeout > crate::proxy::connections::PINGORA_KEEPALIVE {
            self.invalid(
                "server.keepalive_timeout",
                "must be at most 60s (pingora closes idle connections after 60s)",
            );
        }
        if limits.max_connections == 0 {
            self.invalid("server.max_connections", "must be at least 1");
        }
        if limits.max_connections_per_client == 0 {
            self.invalid("server.max_connections_per_client", "must be at least 1");
        }
        limits
    }
}
