//! Compiling `upstreams:`: addresses, TLS trust, credentials and request-meaning rules.

use super::*;

impl Compiler<'_> {
    pub(super) fn upstreams(&mut self, raw: &[(usize, RawUpstream)]) -> Vec<Arc<Upstream>> {
        self.unique(
            "upstream",
            raw.iter()
                .map(|(i, r)| (format!("upstreams[{i}].name"), r.name.as_str())),
        );
        raw.iter()
            .filter_map(|(i, r)| self.upstream(*i, r))
            .map(Arc::new)
            .collect()
    }

    pub(super) fn upstream(&mut self, i: usize, r: &RawUpstream) -> Option<Upstream> {
        let p = format!("upstreams[{i}]");
        let up = format!("{p}.url");
        let connect_timeout = self.duration(
            &format!("{p}.connect_timeout"),
            &r.connect_timeout,
            Duration::from_secs(2),
        );
        let mcp = match r.kind.as_deref() {
            None | Some("http") => false,
            Some("mcp") => true,
            Some(other) => {
                self.invalid(
                    format!("{p}.kind"),
                    format!("`{other}` is not `http` or `mcp`"),
                );
                false
            }
        };
        // Tool calls run long and answer as event streams: an MCP server gets 5 minutes per
        // read unless told otherwise.
        let read_timeout = self.duration(
            &format!("{p}.read_timeout"),
            &r.read_timeout,
            Duration::from_secs(if mcp { 300 } else { 30 }),
        );
        let write_timeout = self.duration(
            &format!("{p}.write_timeout"),
            &r.write_timeout,
            Duration::from_secs(30),
        );
        let idle_timeout = self.duration(
            &format!("{p}.idle_timeout"),
            &r.idle_timeout,
            Duration::from_secs(60),
        );
        let credential = r
            .credential
            .as_ref()
            .and_then(|c| self.credential(&format!("{p}.credential"), c, &r.name));
        let uri: Uri = match r.url.parse() {
            Ok(u) => u,
            Err(e) => {
                self.invalid(&up, format!("`{}` is not a URL: {e}", r.url));
                return None;
            }
        };
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                self.invalid(&up, "the URL must start with http:// or https://");
                return None;
            }
        };
        let tls_ca = match &r.tls_ca_file {
            None => None,
            Some(_) if !tls => {
                self.invalid(
                    format!("{p}.tls_ca_file"),
                    "only valid with an https:// URL",
                );
                None
            }
            Some(f) => self.ca_file(&format!("{p}.tls_ca_file"), f),
        };
        let Some(auth) = uri.authority() else {
            self.invalid(&up, "the URL has no host");
            return None;
        };
        if auth.as_str().contains('@') || uri.query().is_some() {
            self.invalid(
                &up,
                "the URL must not carry user info or a query string; use `credential` for secrets",
            );
            return None;
        }
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = match (host.as_str(), port)
            .to_socket_addrs()
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                self.invalid(&up, format!("cannot resolve `{host}:{port}`"));
                return None;
            }
        };
        let sni = r.tls_server_name.clone().unwrap_or_else(|| host.clone());
        if tls && sni.is_empty() {
            // Pingora skips certificate verification altogether for an empty SNI.
            self.invalid(format!("{p}.tls_server_name"), "must not be empty");
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        let refused_headers = self.header_list(
            &format!("{p}.refuse_headers"),
            DEFAULT_REFUSED_HEADERS,
            &r.refuse_headers,
        );
        let stripped_headers = self.header_list(
            &format!("{p}.strip_headers"),
            DEFAULT_STRIPPED_HEADERS,
            &r.strip_headers,
        );
        let path_parameters = match r.path_parameters.as_deref() {
            None | Some("refuse") => false,
            Some("allow") => true,
            Some(other) => {
                self.invalid(
                    format!("{p}.path_parameters"),
                    format!("`{other}` is not `refuse` or `allow`"),
                );
                false
            }
        };
        Some(Upstream {
            name: r.name.as_str().into(),
            addr,
            tls,
            sni,
            authority: auth.as_str().to_string(),
            authority_header: HeaderValue::from_str(auth.as_str()).ok(),
            base_path,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            credential,
            tls_ca,
            refused_headers,
            stripped_headers,
            path_parameters,
            mcp,
            case_insensitive: r.case_insensitive,
        })
    }

    /// A default header list extended by an upstream's own names (`p` is the field path).
    pub(super) fn header_list(
        &mut self,
        p: &str,
        defaults: &[&'static str],
        extra: &[String],
    ) -> Vec<HeaderName> {
        // Headers every call needs: refusing or stripping them would break all calls or the
        // gateway's own framing, never add safety.
        const PROTECTED: [&str; 5] = [
            "authorization",
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
        ];
        let mut out: Vec<HeaderName> = defaults
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        for (j, h) in extra.iter().enumerate() {
            match HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(n) if PROTECTED.contains(&n.as_str()) => self.invalid(
                    format!("{p}[{j}]"),
                    format!("`{n}` is needed by every call and cannot be listed here"),
                ),
                Ok(n) => {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                Err(_) => self.invalid(format!("{p}[{j}]"), format!("`{h}` is not a header name")),
            }
        }
        out
    }

    /// Read, check and convert the certificates of a `tls_ca_file` (`p` is its field path).
    pub(super) fn ca_file(&mut self, p: &str, f: &str) -> Option<UpstreamCa> {
        let ders = self.ca_certificates(p, f)?;
        let mut digest = Sha256::new();
        for der in &ders {
            digest.update(der);
        }
        let digest = digest.finalize();
        let reqwest = match ders
            .iter()
            .map(|d| reqwest::Certificate::from_der(d))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(c) => c,
            Err(e) => {
                self.invalid(p, format!("`{f}`: {e}"));
                return None;
            }
        };
        Some(UpstreamCa {
            pingora: ders
                .into_iter()
                .map(|d| WrappedX509::new(d, parse_x509))
                .collect(),
            reqwest,
            id: u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")),
        })
    }

    /// The DER certificates of the PEM file `f` (a CA bundle; `p` is its field path), each
    /// checked as rustls will check it at connect time, so that a bad certificate is a config
    /// error rather than a failed connection (and pingora's own parser, which panics on bad
    /// DER, only ever sees certificates that parse).
    pub(super) fn ca_certificates(&mut self, p: &str, f: &str) -> Option<Vec<Vec<u8>>> {
        // Bytes, not a string: a DER or binary file gets "no PEM certificate", not a UTF-8 error.
        let text = match std::fs::read(self.file_path(f)) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                self.invalid(p, format!("cannot read `{f}`: {e}"));
                return None;
            }
        };
        let ders = match pem_certificates(&text) {
            Ok(d) if d.is_empty() => {
                self.invalid(p, format!("`{f}` contains no PEM certificate"));
                return None;
            }
            Ok(d) => d,
            Err(e) => {
                self.invalid(p, format!("`{f}`: {e}"));
                return None;
            }
        };
        let mut roots = RootCertStore::empty();
        for (n, der) in ders.iter().enumerate() {
            if let Err(e) = roots.add(CertificateDer::from(der.as_slice())) {
                self.invalid(
                    p,
                    format!("certificate {} in `{f}` is not usable: {e}", n + 1),
                );
                return None;
            }
        }
        Some(ders)
    }

    pub(super) fn credential(
        &mut self,
        p: &str,
        c: &RawCredential,
        upstream: &str,
    ) -> Option<Credential> {
        let name = c.header.as_deref().unwrap_or("authorization").trim();
        let header = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                self.invalid(
                    format!("{p}.header"),
                    format!("`{name}` is not a valid header name"),
                );
                return None;
            }
        };
        if matches!(
            header.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "te" | "upgrade"
        ) || header.as_str().starts_with("x-portcullis-")
        {
            self.invalid(
                format!("{p}.header"),
                format!("`{header}` is managed by the gateway and cannot carry a credential"),
            );
            return None;
        }
        let set = [c.value.is_some(), c.mint.is_some(), c.exchange.is_some()];
        if set.iter().filter(|b| **b).count() != 1 {
            self.invalid(p, "set exactly one of `value`, `mint`, `exchange`");
            return None;
        }
        if (c.mint.is_some() || c.exchange.is_some()) && !self.has_token_service {
            self.invalid(
                p,
                "`mint` and `exchange` sign with the token service: add a `token_service` section",
            );
            return None;
        }
        let source = if let Some(m) = &c.mint {
            let ttl = self.duration(&format!("{p}.mint.ttl"), &m.ttl, MAX_UPSTREAM_TOKEN_TTL);
            if ttl > MAX_UPSTREAM_TOKEN_TTL || ttl.is_zero() {
                self.invalid(format!("{p}.mint.ttl"), "must be 1s to 60s");
            }
            CredentialSource::Mint {
                audience: m.audience.clone().unwrap_or_else(|| upstream.to_string()),
                ttl,
            }
        } else if let Some(x) = &c.exchange {
            let xp = format!("{p}.exchange");
            if !(x.token_url.starts_with("http://") || x.token_url.starts_with("https://")) {
                self.invalid(format!("{xp}.token_url"), "must be an http(s) URL");
            }
            let timeout =
                self.duration(&format!("{xp}.timeout"), &x.timeout, Duration::from_secs(5));
            let secret = if self.resolve_secrets {
                match secret::resolve(&x.client_secret, &self.base) {
                    Ok(v) => v,
                    Err(e) => {
                        self.invalid(format!("{xp}.client_secret"), e);
                        return None;
                    }
                }
            } else {
                "<not resolved>".to_string()
            };
            CredentialSource::Exchange(Arc::new(crate::token_service::upstream::Exchange::new(
                x.token_url.clone(),
                x.client_id.clone(),
                secret,
                x.audience.clone().unwrap_or_else(|| upstream.to_string()),
                timeout,
            )))
        } else {
            let value = c.value.as_deref().unwrap_or_default();
            if !self.resolve_secrets {
                return Some(Credential::new(
                    header,
                    CredentialSource::Static(Secret(HeaderValue::from_static("<not resolved>"))),
                ));
            }
            let value = match secret::resolve(value, &self.base) {
                Ok(v) => v,
                Err(e) => {
                    self.invalid(format!("{p}.value"), e);
                    return None;
                }
            };
            match HeaderValue::from_str(&value) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    CredentialSource::Static(Secret(v))
                }
                Err(_) => {
                    // Do not echo the value: it is a secret.
                    self.invalid(format!("{p}.value"), "the resolved value is not a valid header value (control characters or newlines?)");
                    return None;
                }
            }
        };
        Some(Credential::new(header, source))
    }
}

/// Longest lifetime of a token minted for an upstream (and its default).
const MAX_UPSTREAM_TOKEN_TTL: Duration = Duration::from_secs(60);

/// DER bytes of every `CERTIFICATE` block of a PEM text, in order. Text between blocks (as in
/// `openssl` bundles) and other blocks are skipped. (`identity::pem` reads one block only.)
pub(super) fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let n = out.len() + 1;
        let block = &rest[start + BEGIN.len()..];
        let Some(end) = block.find(END) else {
            return Err(format!("certificate {n} has no `{END}` line"));
        };
        let b64: String = block[..end].split_whitespace().collect();
        let der = STANDARD
            .decode(b64)
            .map_err(|e| format!("certificate {n} is not valid base64: {e}"))?;
        out.push(der);
        rest = &block[end + END.len()..];
    }
    Ok(out)
}
