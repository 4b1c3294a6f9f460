//! What an approval is bound to, computed identically when it is created and when an agent
//! retries: the request digest, the body hash, the headers digest, a body preview and the
//! headers as approvers see them.
//!
//! Headers are bound, not replayed: the approved call that is forwarded carries the headers of
//! the call that is forwarded (the held call itself in `hold` mode, the agent's retry in
//! `async` mode), and the digest of those headers is part of the request digest. A retry that
//! adds, drops or changes a forwardable header is a different request and opens a new approval.
//! Why not store the approved headers and send those instead: secret-looking headers would
//! have to be kept unredacted at rest, and the retry's own headers would be silently replaced.

use sha2::{Digest, Sha256};

/// The facts an approval binds together.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// Agent id.
    pub agent: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Method.
    pub method: &'a str,
    /// Normalized path.
    pub path: &'a str,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
    /// Hex SHA-256 of the body.
    pub body_sha256: &'a str,
    /// Digest of the policy the decision was made under (`Snapshot::policy_digest`).
    pub policy_digest: &'a str,
    /// [`headers_sha256`] of the forwardable headers.
    pub headers_sha256: &'a str,
}

/// Hex SHA-256 of `body`.
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Hex SHA-256 over every bound field, each length-prefixed so that no two different requests
/// can produce the same byte string (`/a` + `b` vs `/ab` + ``).
pub fn request_digest(b: &Binding<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        b.agent,
        b.route,
        b.method,
        b.path,
        b.query.unwrap_or("\u{0}none"),
        b.body_sha256,
        b.policy_digest,
        b.headers_sha256,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Hex SHA-256 of forwardable request headers in a canonical form: names lowercase, sorted
/// by name, the values of one name in the order sent, every name and value length-prefixed.
/// The caller passes exactly the headers that reach the upstream as the agent sent them (see
/// the approval gate): not hop-by-hop ones, not the agent's credential, not `Content-Length`
/// (the body hash covers the body), not what the gateway strips or sets itself.
pub fn headers_sha256(headers: &[(String, Vec<u8>)]) -> String {
    let mut sorted: Vec<&(String, Vec<u8>)> = headers.iter().collect();
    // Stable: values of the same name keep their order, which upstreams may rely on.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    h.update((sorted.len() as u64).to_be_bytes());
    for (name, value) in sorted {
        let name = name.to_ascii_lowercase();
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
    }
    hex::encode(h.finalize())
}

/// Bytes of body shown to approvers.
pub const PREVIEW_BYTES: usize = 4096;

/// The first [`PREVIEW_BYTES`] of the body as text (lossy), marked when cut.
pub fn body_preview(body: &[u8]) -> String {
    let cut = body.len().min(PREVIEW_BYTES);
    let mut s = String::from_utf8_lossy(&body[..cut]).into_owned();
    if body.len() > cut {
        s.push_str(&format!("… ({} more bytes)", body.len() - cut));
    }
    s
}

/// Header names whose values approvers must never see.
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || n.contains("token")
        || n.contains("secret")
        || n.contains("password")
        || n.contains("api-key")
        || n.contains("apikey")
}

/// Headers as shown to approvers, secrets replaced by `<redacted>`. Redacted values are still
/// bound by [`headers_sha256`]: a retry cannot change them either.
pub fn redacted_headers<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    extra_secret: Option<&str>,
) -> Vec<(String, String)> {
    headers
        .map(|(k, v)| {
            let secret =
                is_secret_header(k) || extra_secret.is_some_and(|e| e.eq_ignore_ascii_case(k));
            let v = if secret {
                "<redacted>".to_string()
            } else {
                String::from_utf8_lossy(v).into_owned()
            };
            (k.to_string(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b<'a>(path: &'a str, query: Option<&'a str>, body: &'a str) -> Binding<'a> {
        Binding {
            agent: "bot",
            route: "r",
            method: "DELETE",
            path,
            query,
            body_sha256: body,
            policy_digest: "c",
            headers_sha256: "h",
        }
    }

    #[test]
    fn digest_changes_with_every_bound_field() {
        let base = request_digest(&b("/t/1", None, "aa"));
        assert_eq!(base, request_digest(&b("/t/1", None, "aa")));
        assert_ne!(base, request_digest(&b("/t/2", None, "aa")));
        assert_ne!(base, request_digest(&b("/t/1", Some(""), "aa")));
        assert_ne!(base, request_digest(&b("/t/1", Some("x=1"), "aa")));
        assert_ne!(base, request_digest(&b("/t/1", None, "ab")));
        let mut other_agent = b("/t/1", None, "aa");
        other_agent.agent = "bot2";
        assert_ne!(base, request_digest(&other_agent));
        let mut other_cfg = b("/t/1", None, "aa");
        other_cfg.policy_digest = "d";
        assert_ne!(base, request_digest(&other_cfg));
        let mut other_headers = b("/t/1", None, "aa");
        other_headers.headers_sha256 = "i";
        assert_ne!(base, request_digest(&other_headers));
        // Length prefixes: moving a byte between fields changes the digest.
        let mut x = b("/t/1", None, "aa");
        x.route = "rD";
        x.method = "ELETE";
        assert_ne!(base, request_digest(&x));
    }

    #[test]
    fn body_hash_and_preview() {
        assert_eq!(
            body_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(body_preview(b"{\"a\":1}"), "{\"a\":1}");
        let big = vec![b'x'; PREVIEW_BYTES + 10];
        assert!(body_preview(&big).ends_with("… (10 more bytes)"));
    }

    #[test]
    fn secrets_are_redacted() {
        let h = [
            ("authorization", b"Bearer t".as_slice()),
            ("x-api-key", b"k".as_slice()),
            ("X-Auth-Token", b"k".as_slice()),
            ("cookie", b"c".as_slice()),
            ("x-vendor", b"v".as_slice()),
            ("content-type", b"application/json".as_slice()),
        ];
        let r = redacted_headers(h.iter().map(|(k, v)| (*k, *v)), Some("X-Vendor"));
        let shown: Vec<&str> = r.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            shown,
            [
                "<redacted>",
                "<redacted>",
                "<redacted>",
                "<redacted>",
                "<redacted>",
                "application/json"
            ]
        );
    }

    fn hs(pairs: &[(&str, &str)]) -> String {
        let v: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        headers_sha256(&v)
    }

    #[test]
    fn headers_digest_is_canonical_but_binds_every_name_and_value() {
        let base = hs(&[("content-type", "a/b"), ("x-a", "1"), ("x-a", "2")]);
        // Order of different names and the case of names do not matter.
        assert_eq!(
            base,
            hs(&[("x-a", "1"), ("Content-Type", "a/b"), ("x-a", "2")])
        );
        // Everything else does.
        for other in [
            hs(&[("content-type", "a/b"), ("x-a", "2"), ("x-a", "1")]),
            hs(&[("content-type", "a/b"), ("x-a", "1")]),
            hs(&[
                ("content-type", "a/b"),
                ("x-a", "1"),
                ("x-a", "2"),
                ("x-b", ""),
            ]),
            hs(&[("content-type", "a/c"), ("x-a", "1"), ("x-a", "2")]),
            hs(&[("content-type", "a/b"), ("x-a", "12")]),
            hs(&[("content-type", "a/b"), ("x-a1", ""), ("x-a", "2")]),
            hs(&[]),
        ] {
            assert_ne!(base, other);
        }
    }
}
