//! Compiling `identity:` and `issuers:`.

use super::*;

impl Compiler<'_> {
    pub(super) fn identity(&mut self, r: &RawIdentity) -> IdentitySettings {
        let d = IdentitySettings::default();
        let subject_claim = r.subject_claim.clone().unwrap_or(d.subject_claim);
        if subject_claim.trim().is_empty() {
            self.invalid("identity.subject_claim", "must not be empty");
        }
        let scope_claims = r.scope_claims.clone().unwrap_or(d.scope_claims);
        if scope_claims.is_empty() {
            self.invalid(
                "identity.scope_claims",
                "list at least one claim, e.g. `[scope, scp]`",
            );
        }
        let max_token_bytes = r.max_token_bytes.unwrap_or(d.max_token_bytes);
        if max_token_bytes < 256 {
            self.invalid("identity.max_token_bytes", "must be at least 256");
        }
        IdentitySettings {
            clock_skew: self.duration("identity.clock_skew", &r.clock_skew, d.clock_skew),
            max_token_ttl: self.duration(
                "identity.max_token_ttl",
                &r.max_token_ttl,
                d.max_token_ttl,
            ),
            max_token_bytes,
            subject_claim,
            scope_claims,
            cache_capacity: r.cache_capacity.unwrap_or(d.cache_capacity),
            approver_claim: None,
        }
    }

    pub(super) fn issuers(&mut self, raw: &[(usize, RawIssuer)]) -> Vec<IssuerConfig> {
        self.unique(
            "issuer",
            raw.iter()
                .map(|(i, r)| (format!("issuers[{i}].name"), r.name.as_str())),
        );
        if raw.is_empty() {
            self.invalid(
                "issuers",
                "no token issuer is configured, so every request would be refused; add one",
            );
        }
        raw.iter().map(|(i, r)| self.issuer(*i, r)).collect()
    }

    pub(super) fn issuer(&mut self, i: usize, r: &RawIssuer) -> IssuerConfig {
        let p = format!("issuers[{i}]");
        if r.issuer.trim().is_empty() {
            self.invalid(format!("{p}.issuer"), "must not be empty");
        }
        if r.audiences.is_empty() {
            self.invalid(format!("{p}.audiences"), "list at least one audience");
        }
        let mut algorithms = Vec::new();
        for (j, a) in r.algorithms.iter().enumerate() {
            let ap = format!("{p}.algorithms[{j}]");
            let alg = match a.as_str() {
                "ES256" => jsonwebtoken::Algorithm::ES256,
                "ES384" => jsonwebtoken::Algorithm::ES384,
                "RS256" => jsonwebtoken::Algorithm::RS256,
                "PS256" => jsonwebtoken::Algorithm::PS256,
                "EdDSA" => jsonwebtoken::Algorithm::EdDSA,
                "HS256" | "HS384" | "HS512" => {
                    if !r.allow_hmac {
                        self.invalid(&ap, format!("{a} uses a shared secret; set `allow_hmac: true` on this issuer to accept it"));
                    }
                    a.parse().expect("HS names parse")
                }
                "none" | "None" | "NONE" => {
                    self.invalid(&ap, "unsigned tokens (`none`) are never accepted");
                    continue;
                }
                other => {
                    self.invalid(&ap, format!("unsupported algorithm `{other}`; use ES256, ES384, RS256, PS256, EdDSA (or HS256 with allow_hmac)"));
                    continue;
                }
            };
            algorithms.push(alg);
        }
        if r.algorithms.is_empty() {
            self.invalid(
                format!("{p}.algorithms"),
                "list the accepted algorithms explicitly, e.g. `[ES256]`",
            );
        }
        let hmac_alg = algorithms.iter().any(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        });

        let mut keys = self.inline_keys(&p, &r.keys);
        if let Some(f) = &r.jwks_file {
            keys.push(KeySource::JwksFile(self.file_path(f)));
        }
        if let Some(u) = &r.jwks_url {
            let (url, refresh, refetch, timeout) = match u {
                RawJwksUrl::Url(url) => (url.clone(), None, None, None),
                RawJwksUrl::Detailed(d) => (
                    d.url.clone(),
                    d.refresh_interval.clone(),
                    d.min_refetch_interval.clone(),
                    d.timeout.clone(),
                ),
            };
            let up = format!("{p}.jwks_url");
            match url.parse::<Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http") | Some("https")) => {}
                _ => self.invalid(&up, format!("`{url}` is not an http(s) URL")),
            }
            keys.push(KeySource::JwksUrl {
                url,
                refresh_interval: self.duration(
                    &format!("{up}.refresh_interval"),
                    &refresh,
                    Duration::from_secs(300),
                ),
                min_refetch_interval: self.duration(
                    &format!("{up}.min_refetch_interval"),
                    &refetch,
                    Duration::from_secs(30),
                ),
                timeout: self.duration(&format!("{up}.timeout"), &timeout, Duration::from_secs(5)),
            });
        }
        if let Some(dir) = &r.signing_keyring {
            let kp = format!("{p}.signing_keyring");
            if r.signing_key_file.is_some() {
                self.invalid(&kp, "set `signing_key_file` or `signing_keyring`, not both");
            }
            if !algorithms.contains(&jsonwebtoken::Algorithm::ES256) {
                self.invalid(&kp, "keyring keys are ES256: add ES256 to `algorithms`");
            }
            // Every key the manifest still names verifies: `keys rotate` prunes retired keys
            // once their tokens can no longer be valid.
            match crate::identity::keyring::Keyring::load(&self.file_path(dir)) {
                Ok(ring) => {
                    for k in ring.keys() {
                        keys.push(KeySource::SigningKeyFile {
                            path: ring.path_of(k),
                            kid: k.kid.clone(),
                        });
                    }
                }
                Err(e) => self.invalid(&kp, e.to_string()),
            }
        }
        if let Some(f) = &r.signing_key_file {
            if !algorithms.contains(&jsonwebtoken::Algorithm::ES256) {
                self.invalid(
                    format!("{p}.signing_key_file"),
                    "the signing key is ES256: add ES256 to `algorithms`",
                );
            }
            let path = self.file_path(f);
            if !path.exists() {
                self.invalid(
                    format!("{p}.signing_key_file"),
                    format!(
                        "`{}` does not exist; create it with `portcullis keygen --out {f}`",
                        path.display()
                    ),
                );
            }
            keys.push(KeySource::SigningKeyFile {
                path,
                kid: r.signing_key_id.clone().unwrap_or_else(|| r.name.clone()),
            });
        }
        match (&r.hmac_secret, hmac_alg) {
            (Some(s), true) => match secret::resolve(s, &self.base) {
                Ok(v) if v.len() >= 32 => keys.push(KeySource::HmacSecret {
                    secret: v.into_bytes(),
                    kid: None,
                }),
                Ok(_) => self.invalid(
                    format!("{p}.hmac_secret"),
                    "an HMAC secret must be at least 32 bytes",
                ),
                Err(e) => self.invalid(format!("{p}.hmac_secret"), e),
            },
            (Some(_), false) => self.invalid(
                format!("{p}.hmac_secret"),
                "an HMAC secret needs an HS algorithm in `algorithms`",
            ),
            (None, true) => self.invalid(
                format!("{p}.algorithms"),
                "HS algorithms need `hmac_secret`",
            ),
            (None, false) => {}
        }
        if keys.is_empty() {
            self.invalid(
                &p,
                "no keys: set `keys`, `jwks_file`, `jwks_url`, `signing_key_file` or `signing_keyring`",
            );
        }
        IssuerConfig {
            name: r.name.clone(),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            algorithms,
            keys,
        }
    }

    /// Inline verification keys (`keys: [{pem | pem_file | jwk, kid}]`) of an issuer or of an
    /// agent's client registration. A JWK holding a private part (`d`) is refused: only the
    /// public half belongs in the config.
    pub(super) fn inline_keys(&mut self, p: &str, raw: &[RawKey]) -> Vec<KeySource> {
        let mut keys = Vec::new();
        for (j, k) in raw.iter().enumerate() {
            let kp = format!("{p}.keys[{j}]");
            let set = [k.pem.is_some(), k.pem_file.is_some(), k.jwk.is_some()];
            if set.iter().filter(|b| **b).count() != 1 {
                self.invalid(&kp, "set exactly one of `pem`, `pem_file`, `jwk`");
                continue;
            }
            if let Some(pem) = &k.pem {
                keys.push(KeySource::Pem {
                    pem: pem.clone(),
                    kid: k.kid.clone(),
                });
            } else if let Some(f) = &k.pem_file {
                match std::fs::read_to_string(self.file_path(f)) {
                    Ok(pem) => keys.push(KeySource::Pem {
                        pem,
                        kid: k.kid.clone(),
                    }),
                    Err(e) => {
                        self.invalid(format!("{kp}.pem_file"), format!("cannot read `{f}`: {e}"))
                    }
                }
            } else if let Some(jwk) = &k.jwk {
                if jwk.get("d").is_some() {
                    self.invalid(
                        format!("{kp}.jwk"),
                        "this is a private key; register the public half only",
                    );
                    continue;
                }
                let mut jwk = jwk.clone();
                if let (Some(kid), Some(obj)) = (&k.kid, jwk.as_object_mut()) {
                    obj.entry("kid")
                        .or_insert(serde_json::Value::String(kid.clone()));
                }
                keys.push(KeySource::Jwk(jwk));
            }
        }
        keys
    }
}
