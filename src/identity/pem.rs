//! Minimal PEM framing (RFC 7468): read the label and DER of the first block, write one block.
//!
//! jsonwebtoken parses PEM internally but does not expose the label; we need it to refuse
//! private keys and certificates where a public key is expected, and to read our own PKCS#8
//! signing key for aws-lc-rs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// One decoded PEM block.
pub(crate) struct PemBlock {
    /// The text after `-----BEGIN ` (e.g. `PUBLIC KEY`).
    pub(crate) label: String,
    /// The base64-decoded body.
    pub(crate) der: Vec<u8>,
}

/// Decode the first PEM block of `text`.
pub(crate) fn decode(text: &str) -> Result<PemBlock, String> {
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or("not a PEM document (no -----BEGIN line)")?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        body.push_str(line);
    }
    if !ended {
        return Err(format!("PEM block `{label}` has no matching END line"));
    }
    let der = STANDARD
        .decode(body)
        .map_err(|e| format!("PEM block `{label}` is not valid base64: {e}"))?;
    Ok(PemBlock { label, der })
}

/// Encode `der` as one PEM block with 64-character lines.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_framing_errors() {
        let der: Vec<u8> = (0..=255).collect();
        let text = encode("PUBLIC KEY", &der);
        assert!(text.lines().all(|l| l.len() <= 64));
        let block = decode(&text).unwrap();
        assert_eq!(block.label, "PUBLIC KEY");
        assert_eq!(block.der, der);

        let cases = [
            ("hello", "no -----BEGIN line"),
            ("-----BEGIN X-----\nAAAA\n", "no matching END"),
            (
                "-----BEGIN X-----\n!!!!\n-----END X-----\n",
                "not valid base64",
            ),
        ];
        for (input, want) in cases {
            let err = decode(input).err().unwrap();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }
}
