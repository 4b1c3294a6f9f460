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
        if let Some(t) = &l.token {
            self.listen_addr("listen.token", t);
            if proxy_listen.contains(t) || *t == admin_listen {
                self.invalid(
                    "listen.token",
                    "the token listener must differ from the proxy and admin listeners",
                );
            }
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
        let access_log = match (&raw.access_log.syslog, raw.access_log.path.as_deref()) {
            (Some(s), Some(_)) => {
                self.invalid(
                    "access_log.syslog",
                    "`access_log.path` and `access_log.syslog` are both set: the log goes to one of them; remove one",
                );
                // Checked anyway, so that every issue is reported at once.
                self.syslog_target(s);
                AccessLogTarget::Stdout
            }
            (Some(s), None) => self
                .syslog_target(s)
                .map_or(AccessLogTarget::Stdout, AccessLogTarget::Syslog),
            (None, None | Some("stdout") | Some("-")) => AccessLogTarget::Stdout,
            (None, Some(p)) => AccessLogTarget::File(self.file_path(p)),
        };
        let access_log_ecs = match raw.access_log.schema.as_deref() {
            None | Some("portcullis") => false,
            Some("ecs") => true,
            Some(other) => {
                self.invalid(
                    "access_log.schema",
                    format!("`{other}` is not a log schema: `portcullis` or `ecs`"),
                );
                false
            }
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
            token_listen: l.token.clone(),
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
            shared_state: self.shared_state(raw),
            tracing: self.tracing(raw),
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
            access_log_ecs,
        }
    }

    /// `state:`: the embedded default, or `shared` with both PostgreSQL and Redis.
    fn shared_state(&mut self, raw: &RawConfig) -> Option<SharedStateSettings> {
        let st = &raw.state;
        match st.backend.as_deref() {
            None | Some("embedded") => {
                for (field, set) in [
                    ("postgres", st.postgres.is_some()),
                    ("redis", st.redis.is_some()),
                ] {
                    if set {
                        self.invalid(
                            format!("state.{field}"),
                            "only used with `backend: shared` (the embedded backend keeps everything in this process and its SQLite files)",
                        );
                    }
                }
                None
            }
            Some("shared") => {
                if st.store.is_some() {
                    self.invalid(
                        "state.store",
                        "a SQLite file is not shared: with `backend: shared` agent state lives in `state.postgres`; remove `store`",
                    );
                }
                if raw.approvals.as_ref().is_some_and(|a| a.store.is_some()) {
                    self.invalid(
                        "approvals.store",
                        "with `state.backend: shared` approvals live in `state.postgres`; remove `approvals.store`",
                    );
                }
                let (Some(pg), Some(redis)) = (&st.postgres, &st.redis) else {
                    self.invalid(
                        "state",
                        "`backend: shared` needs both `postgres` (approvals, durable agent state) and `redis` (shared limits, kill-switch propagation)",
                    );
                    return None;
                };
                let mut url = |path: &str, text: &str, schemes: &[&str]| -> Option<String> {
                    match secret::resolve(text, &self.base) {
                        Ok(u) if schemes.iter().any(|s| u.starts_with(s)) => Some(u),
                        Ok(u) => {
                            self.invalid(
                                path,
                                format!(
                                    "`{}` must start with {}",
                                    redact_url(&u),
                                    schemes.join(" or ")
                                ),
                            );
                            None
                        }
                        Err(e) => {
                            self.invalid(path, e);
                            None
                        }
                    }
                };
                let postgres_url = url(
                    "state.postgres.url",
                    &pg.url,
                    &["postgres://", "postgresql://"],
                );
                let redis_url = url("state.redis.url", &redis.url, &["redis://", "rediss://"])
                    .and_then(|u| match crate::state::redis_limits::check_url(&u) {
                        Ok(()) => Some(u),
                        Err(e) => {
                            self.invalid("state.redis.url", e);
                            None
                        }
                    });
                let postgres_max_connections = pg.max_connections.unwrap_or(8);
                if postgres_max_connections == 0 {
                    self.invalid("state.postgres.max_connections", "must be at least 1");
                }
                let postgres_timeout = self.duration(
                    "state.postgres.timeout",
                    &pg.timeout,
                    Duration::from_secs(2),
                );
                let redis_timeout = self.duration(
                    "state.redis.timeout",
                    &redis.timeout,
                    Duration::from_millis(250),
                );
                let redis_key_prefix = redis
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| "portcullis:".to_string());
                Some(SharedStateSettings {
                    postgres_url: postgres_url?,
                    postgres_max_connections,
                    postgres_timeout,
                    redis_url: redis_url?,
                    redis_key_prefix,
                    redis_timeout,
                })
            }
            Some(other) => {
                self.invalid(
                    "state.backend",
                    format!("`{other}` is not `embedded` or `shared`"),
                );
                None
            }
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
