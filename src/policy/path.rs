//! Canonicalization of request paths.
//!
//! Security invariant: the path a route matches is *exactly* the path the upstream receives.
//! Gateways get bypassed when the matcher and the upstream disagree about what a path means
//! (`/public/../admin`, `/%61dmin`, `/admin%2F..`, `/a\..\admin`, ...). So we normalize once,
//! hand the single canonical string to both the router and the forwarder, and refuse anything
//! whose meaning differs between servers instead of guessing how the upstream will read it.
//!
//! The canonical form produced by [`normalize`]:
//! - starts with `/`, contains no empty segments (`//`) and no `.`/`..` segments;
//! - contains only RFC 3986 `pchar`s and `/`; every percent-encoding is `%XX` with uppercase hex
//!   digits and never encodes an unreserved character;
//! - is a fixed point: `normalize(normalize(x)?.as_str())? == normalize(x)?`.

use std::fmt;

/// Why a request path was refused (the gateway answers 400 with [`PathError::code`] as the
/// machine code and the `Display` text as the human/agent-readable explanation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (includes `*`, absolute-form URLs and relative paths).
    #[error(
        "the request path must start with '/' (origin-form, e.g. \"/api/tickets\"); '*', absolute URLs and relative paths are not accepted"
    )]
    NotAbsolute,
    /// The path contains `%2F`/`%2f`.
    #[error(
        "the request path contains an encoded '/' (%2F), which is ambiguous; send the path with literal '/' separators"
    )]
    EncodedSlash,
    /// The path contains `%5C`/`%5c`.
    #[error(
        "the request path contains an encoded '\\' (%5C), which some servers treat as a path separator; remove it and use literal '/' separators"
    )]
    EncodedBackslash,
    /// The path contains a literal `\`.
    #[error(
        "the request path contains a literal '\\', which some servers treat as a path separator; use '/' to separate path segments"
    )]
    Backslash,
    /// The path contains a NUL byte, literally or as `%00`.
    #[error(
        "the request path contains a NUL byte (literal or %00), which is never valid; remove it"
    )]
    Nul,
    /// A `%` not followed by two hex digits, or percent-encoded bytes that are not valid UTF-8.
    #[error(
        "the request path contains invalid percent-encoding: every '%' must be followed by two hex digits (send a literal '%' as %25) and the encoded bytes must form valid UTF-8"
    )]
    InvalidPercentEncoding,
    /// A `..` segment would climb above the root.
    #[error(
        "the request path uses '..' to climb above the root '/'; remove the extra '..' segments and send the intended path directly"
    )]
    EscapesRoot,
    /// A byte below 0x20 or equal to 0x7F, literal or percent-encoded.
    #[error(
        "the request path contains a control character (a byte below 0x20, or 0x7F, literal or percent-encoded); remove it"
    )]
    ControlCharacter,
    /// The path (raw, or after canonical re-encoding) is longer than `max` bytes.
    #[error(
        "the request path is longer than the {max}-byte limit; shorten it (send large data in the request body instead)"
    )]
    TooLong {
        /// The configured limit in bytes.
        max: usize,
    },
    /// A `.` or `..` segment carrying `;` parameters (`/public/..;/admin`): Tomcat-style
    /// upstreams strip the parameters and then resolve the dot segment, so the upstream would
    /// reach a different resource than the one the route matched.
    #[error(
        "the request path has a '.' or '..' segment with ';' parameters (such as '..;'), which upstreams resolve differently; send the intended path without it"
    )]
    DotSegmentParameter,
    /// A segment carries `;` parameters (`/api/admin;x=1/users`, or the encoded `%3B`) and the
    /// upstream of the route has not opted in (`path_parameters: allow`). Servers that strip
    /// matrix parameters would serve a different resource than the one the route matched.
    #[error(
        "the request path has ';' segment parameters (such as '/admin;x=1'), which upstreams resolve differently; send the path without them"
    )]
    PathParameter,
    /// The path contains a literal `#`.
    #[error(
        "the request path contains '#'; fragments are client-side only and must not be sent: remove '#' and what follows it, or encode it as %23 if it is data"
    )]
    Fragment,
}

impl PathError {
    /// Stable snake_case machine code for this error (part of the public API: never rename).
    pub fn code(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::EncodedSlash => "encoded_slash",
            PathError::EncodedBackslash => "encoded_backslash",
            PathError::Backslash => "backslash",
            PathError::Nul => "nul",
            PathError::InvalidPercentEncoding => "invalid_percent_encoding",
            PathError::EscapesRoot => "escapes_root",
            PathError::ControlCharacter => "control_character",
            PathError::TooLong { .. } => "too_long",
            PathError::Fragment => "fragment",
            PathError::DotSegmentParameter => "dot_segment_parameter",
            PathError::PathParameter => "path_parameter",
        }
    }
}

/// The canonical form of a request target's path. Matching and forwarding both use `as_str()`,
/// so the path a route matched is exactly the path the upstream receives.
///
/// The field is private so that a `NormalizedPath` can only come out of [`normalize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath(String);

impl NormalizedPath {
    /// The canonical path, e.g. `"/api/tickets/42"`. Always starts with `'/'`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The non-empty segments, in order: `"/a/b/"` yields `"a"`, `"b"`; `"/"` yields nothing.
    /// Segments are still in canonical percent-encoded form (e.g. `"caf%C3%A9"`).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        // The canonical form has no empty segments except before the leading '/' and after a
        // trailing '/', so filtering empties is exactly "drop those two".
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// Whether some segment carries `;` parameters, literal or encoded (`%3B`). Servers that
    /// strip matrix parameters (Tomcat, Jetty, Spring) read `/admin;x=1` as `/admin`.
    pub fn has_parameters(&self) -> bool {
        // One vectorized scan for `;` or `%` (canonical encodings are uppercase); most paths
        // have neither. Runs on every request.
        let b = self.0.as_bytes();
        let mut from = 0;
        while let Some(at) = memchr::memchr2(b';', b'%', &b[from..]) {
            let i = from + at;
            if b[i] == b';' || b[i + 1..].starts_with(b"3B") {
                return true;
            }
            from = i + 1;
        }
        false
    }

    /// The path as a server that strips `;` parameters reads it: every segment cut at its
    /// first `;` or `%3B`, then empty segments collapsed (a trailing slash is kept). Dot
    /// segments cannot appear: [`normalize`] refuses `.`/`..` with parameters.
    pub fn without_parameters(&self) -> NormalizedPath {
        let mut out = String::with_capacity(self.0.len());
        let mut trailing_slash = false;
        for segment in self.0[1..].split('/') {
            let kept = &segment[..parameter_start(segment)];
            if kept.is_empty() {
                trailing_slash = true;
            } else {
                out.push('/');
                out.push_str(kept);
                trailing_slash = false;
            }
        }
        if out.is_empty() || trailing_slash {
            out.push('/');
        }
        NormalizedPath(out)
    }
}

/// Byte offset where a canonical segment's `;` parameters start (its length if none).
fn parameter_start(segment: &str) -> usize {
    let literal = segment.find(';').unwrap_or(segment.len());
    let encoded = segment.find("%3B").unwrap_or(segment.len());
    literal.min(encoded)
}

impl fmt::Display for NormalizedPath {
    /// Writes the canonical path (same as [`NormalizedPath::as_str`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a single raw byte is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A `pchar` other than `.` and `%`: copied as is.
    Plain,
    /// `/`: separator; `//` means the slow path must collapse it.
    Slash,
    /// `.`: plain, but `/.` may start a dot segment, so it forces the slow path.
    Dot,
    /// `%`: start of a percent-encoding, which must be validated and canonicalized.
    Percent,
    /// Allowed to arrive but not a `pchar` (space, `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`,
    /// `|`, `}`, `?`, and every non-ASCII byte): percent-encoded so that the literal and the
    /// encoded spelling canonicalize to the same string.
    Encode,
    /// `\`: refused (Windows/IIS and some Java stacks treat it as `/`).
    Backslash,
    /// NUL: refused (C-based upstreams truncate the path there).
    Nul,
    /// Other C0 controls and DEL: refused (header/log injection, parser disagreements).
    Control,
    /// `#`: refused (a fragment never belongs in a request; upstreams may cut the path there).
    Hash,
}

/// Byte → class lookup, built at compile time so the per-request scan is one load per byte.
static CLASS: [Class; 256] = build_class_table();

const fn build_class_table() -> [Class; 256] {
    let mut table = [Class::Encode; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = match i as u8 {
            0 => Class::Nul,
            0x01..=0x1f | 0x7f => Class::Control,
            b'/' => Class::Slash,
            b'.' => Class::Dot,
            b'%' => Class::Percent,
            b'\\' => Class::Backslash,
            b'#' => Class::Hash,
            // RFC 3986 pchar = unreserved / sub-delims / ":" / "@" (minus '.', handled above).
            // ';' is deliberately Plain: see rule 6 in `normalize`.
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'~'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@' => Class::Plain,
            _ => Class::Encode,
        };
        i += 1;
    }
    table
}

/// Normalize the raw path (no query string: caller splits on the first '?').
///
/// Rules, in the order they are applied:
/// 1. Length: more than `max_len` bytes → [`PathError::TooLong`], checked before any work so an
///    attacker cannot make us process huge inputs. The canonical result is checked again,
///    because re-encoding literal non-ASCII bytes can make it longer than the input.
/// 2. Must start with `/` (origin-form) → else [`PathError::NotAbsolute`]; `*` and absolute-form
///    leftovers have no path a route could match.
/// 3. Literal `\`, NUL, control characters and `#` are refused (see [`PathError`] variants):
///    servers disagree on their meaning, so any interpretation we chose could be bypassed.
/// 4. Percent-decoding: `%XX` of an *unreserved* character (ALPHA, DIGIT, `-`, `.`, `_`, `~`) is
///    decoded, because RFC 3986 says both spellings are equivalent and upstreams decode them
///    (`/%61dmin` must not dodge a rule for `/admin`; `%2e%2e` becomes a real `..`). Every other
///    valid `%XX` stays encoded with uppercase hex, since decoding it would change the meaning
///    (`%3F` is data, `?` is not); `%2F`, `%5C`, `%00` and encoded controls are refused because
///    upstreams disagree on whether they separate segments or terminate the path. Malformed
///    encodings and encoded bytes that are not valid UTF-8 (e.g. the overlong `%C0%AF` = `/`
///    that old decoders accepted) are refused. `%25` (an encoded `%`) is kept as is: we decode
///    exactly once, like a conforming upstream.
/// 5. Repeated slashes are collapsed (`//admin` → `/admin`): most upstreams do this, so a route
///    must see the same thing.
/// 6. `;` is *not* a separator: `/admin;x=y` keeps `;x=y` as part of the segment, so it does
///    not equal `/admin` and routes for `/admin` won't match it (the safe outcome: refusing
///    to route is never a bypass). But a `.` or `..` segment with parameters (`..;`, `.;x`)
///    is refused ([`PathError::DotSegmentParameter`]): we must not resolve it (that is not
///    RFC 3986) and must not forward it either, because Tomcat-style upstreams strip `;...` and
///    then resolve the dot segment, so `/public/..;/admin` matched by `/public/**` would reach
///    `/admin` upstream.
/// 7. `.` and `..` segments are resolved (RFC 3986 `remove_dot_segments`), including those
///    produced by decoding. A `..` above the root is [`PathError::EscapesRoot`] rather than
///    silently clamped: such a request is an attack or a client bug, and clamping would hide it.
/// 8. A trailing slash is preserved (`/a/b/` stays `/a/b/`; a final `.` or `..` also leaves
///    one: `/a/b/.` → `/a/b/`), because upstreams often treat `/a/b` and `/a/b/` differently.
///    The root is `/`.
///
/// Fast path: when the input has no `%`, no `//`, no `/.` and nothing to refuse or re-encode,
/// it is already canonical and is returned as is with a single allocation.
pub fn normalize(raw: &str, max_len: usize) -> Result<NormalizedPath, PathError> {
    let bytes = raw.as_bytes();
    if bytes.len() > max_len {
        return Err(PathError::TooLong { max: max_len });
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }

    // One scan over the bytes: this runs on every request. It stops at the first byte that
    // needs real work and hands the whole input to the slow path, so errors are always
    // reported for the leftmost offending byte.
    let mut prev = 0u8;
    for &b in bytes {
        match CLASS[b as usize] {
            Class::Plain => {}
            Class::Slash | Class::Dot if prev == b'/' => return normalize_slow(bytes, max_len),
            Class::Slash | Class::Dot => {}
            Class::Percent | Class::Encode => return normalize_slow(bytes, max_len),
            Class::Backslash => return Err(PathError::Backslash),
            Class::Nul => return Err(PathError::Nul),
            Class::Control => return Err(PathError::ControlCharacter),
            Class::Hash => return Err(PathError::Fragment),
        }
        prev = b;
    }
    Ok(NormalizedPath(raw.to_owned()))
}

/// Full normalization: canonical percent-encoding, then dot-segment and slash resolution.
fn normalize_slow(raw: &[u8], max_len: usize) -> Result<NormalizedPath, PathError> {
    let encoded = canonicalize_encoding(raw)?;
    let mut out = remove_dot_segments(&encoded)?;
    // Re-check: percent-encoding literal non-ASCII triples its size, and the limit must hold
    // for what we forward (it also keeps `normalize` idempotent under the same `max_len`).
    if out.len() > max_len {
        return Err(PathError::TooLong { max: max_len });
    }
    out.shrink_to_fit();
    Ok(NormalizedPath(out))
}

/// Step 1 of the slow path: validate every byte and rewrite the path so each character has
/// exactly one spelling (unreserved decoded, everything else `%XX` uppercase). The result is
/// pure ASCII. Decoding never produces `/` (`%2F` is refused), so segment boundaries are the
/// same before and after this step.
fn canonicalize_encoding(raw: &[u8]) -> Result<String, PathError> {
    let mut buf = String::with_capacity(raw.len());
    // Set when an encoded non-ASCII byte came from the client; only then is a UTF-8 check
    // needed (literal non-ASCII comes from a `&str` and is valid UTF-8 by construction).
    let mut client_encoded_high = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match CLASS[b as usize] {
            Class::Plain | Class::Slash | Class::Dot => {
                buf.push(char::from(b));
                i += 1;
            }
            Class::Encode => {
                push_encoded(&mut buf, b);
                i += 1;
            }
            Class::Percent => {
                let hi = raw.get(i + 1).copied().and_then(hex_value);
                let lo = raw.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::InvalidPercentEncoding);
                };
                let v = (hi << 4) | lo;
                i += 3;
                match v {
                    0 => return Err(PathError::Nul),
                    0x01..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        buf.push(char::from(v));
                    }
                    _ => {
                        client_encoded_high |= v >= 0x80;
                        push_encoded(&mut buf, v);
                    }
                }
            }
            Class::Backslash => return Err(PathError::Backslash),
            Class::Nul => return Err(PathError::Nul),
            Class::Control => return Err(PathError::ControlCharacter),
            Class::Hash => return Err(PathError::Fragment),
        }
    }
    if client_encoded_high && !decodes_to_utf8(&buf) {
        return Err(PathError::InvalidPercentEncoding);
    }
    Ok(buf)
}

/// Step 2 of the slow path: RFC 3986 `remove_dot_segments` plus collapsing empty segments, over
/// a canonical-encoded path that starts with `/`.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    // Whether the last input segment asks for a trailing slash: an empty last segment
    // (input ended in '/') or a final "." / ".." (RFC 3986 keeps the '/' before them).
    let mut trailing_slash = false;
    // Skip the leading '/': every segment is then "text up to the next '/'".
    for segment in path[1..].split('/') {
        match segment {
            // Empty segments are collapsed slashes; "." refers to the current directory.
            "" | "." => trailing_slash = true,
            ".." => {
                // `out` is a sequence of "/segment"; popping one is truncating at its '/'.
                // Nothing left to pop means the client tried to climb above the root.
                let Some(cut) = out.rfind('/') else {
                    return Err(PathError::EscapesRoot);
                };
                // A segment that is nothing but parameters (`;x`) is empty to a server that
                // strips them, so there this `..` would pop the segment before it instead
                // (`/a/;x/..` is `/a` here and `/` there).
                if parameter_start(&out[cut + 1..]) == 0 {
                    return Err(PathError::DotSegmentParameter);
                }
                out.truncate(cut);
                trailing_slash = true;
            }
            // "..;x" / ".;" / "..%3B": ambiguous between us and Tomcat-style upstreams (rule 6).
            s if matches!(&s[..parameter_start(s)], "." | "..") => {
                return Err(PathError::DotSegmentParameter);
            }
            _ => {
                out.push('/');
                out.push_str(segment);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Appends `%XX` with uppercase hex digits (the canonical spelling, RFC 3986 §6.2.2.1).
fn push_encoded(buf: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    buf.push('%');
    buf.push(char::from(HEX[usize::from(b >> 4)]));
    buf.push(char::from(HEX[usize::from(b & 0x0f)]));
}

/// Value of one ASCII hex digit, either case.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether fully percent-decoding a canonical-encoded path yields valid UTF-8. Rust's UTF-8
/// validation refuses overlong forms and surrogates, which is the point: those were used to
/// smuggle `/` and `.` past gateways into lenient decoders.
fn decodes_to_utf8(canonical: &str) -> bool {
    let bytes = canonical.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // `canonical` was produced by `canonicalize_encoding`, so every '%' is followed by
            // two valid hex digits; the fallbacks only keep this function panic-free.
            let hi = bytes.get(i + 1).copied().and_then(hex_value).unwrap_or(0xf);
            let lo = bytes.get(i + 2).copied().and_then(hex_value).unwrap_or(0xf);
            decoded.push((hi << 4) | lo);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 2048;

    /// Every case asserts the exact canonical string or the exact error.
    const CASES: &[(&str, Result<&str, PathError>)] = &[
        ("/", Ok("/")),
        ("/api/tickets/42", Ok("/api/tickets/42")),
        ("/api//tickets", Ok("/api/tickets")),
        ("//admin", Ok("/admin")),
        ("///", Ok("/")),
        ("/a/../admin", Ok("/admin")),
        ("/api/./tickets", Ok("/api/tickets")),
        ("/api/tickets/..", Ok("/api/")),
        ("/a/..", Ok("/")),
        ("/.", Ok("/")),
        ("/%2e%2e/admin", Err(PathError::EscapesRoot)),
        ("/api/%2e%2e/admin", Ok("/admin")),
        ("/api/%2E%2e/%2e/x", Ok("/x")),
        ("/%61dmin", Ok("/admin")),
        ("/a%2Fb", Err(PathError::EncodedSlash)),
        ("/a%2fb", Err(PathError::EncodedSlash)),
        ("/a\\b", Err(PathError::Backslash)),
        ("/a%5Cb", Err(PathError::EncodedBackslash)),
        ("/a%5cb", Err(PathError::EncodedBackslash)),
        ("/a%00", Err(PathError::Nul)),
        ("/a\0b", Err(PathError::Nul)),
        ("/a%zz", Err(PathError::InvalidPercentEncoding)),
        ("/a%4", Err(PathError::InvalidPercentEncoding)),
        ("/a%", Err(PathError::InvalidPercentEncoding)),
        ("/a%4\u{e9}", Err(PathError::InvalidPercentEncoding)),
        ("/..", Err(PathError::EscapesRoot)),
        ("/a/../..", Err(PathError::EscapesRoot)),
        ("/a/b/../../..", Err(PathError::EscapesRoot)),
        ("/admin;x=y", Ok("/admin;x=y")),
        ("/a/..;/b", Err(PathError::DotSegmentParameter)),
        ("/a/.;/b", Err(PathError::DotSegmentParameter)),
        ("/public/..;x=1/admin", Err(PathError::DotSegmentParameter)),
        ("/a/%2e%2e;/b", Err(PathError::DotSegmentParameter)),
        ("/a/..%3b/b", Err(PathError::DotSegmentParameter)),
        ("/a/%2E%3Bx/b", Err(PathError::DotSegmentParameter)),
        ("/a/;x/../b", Err(PathError::DotSegmentParameter)),
        ("/a/%3Bx/../b", Err(PathError::DotSegmentParameter)),
        ("/a/b;x/../c", Ok("/a/c")),
        ("/a/x..;/b", Ok("/a/x..;/b")),
        ("/a/b/", Ok("/a/b/")),
        ("/a/b/.", Ok("/a/b/")),
        ("/a/b//", Ok("/a/b/")),
        ("/api/%7Euser", Ok("/api/~user")),
        ("/api/caf%c3%a9", Ok("/api/caf%C3%A9")),
        ("/api/caf\u{e9}", Ok("/api/caf%C3%A9")),
        ("/a%3a", Ok("/a%3A")),
        ("/a%25", Ok("/a%25")),
        ("/a%252e%252e", Ok("/a%252e%252e")),
        ("/a b", Ok("/a%20b")),
        ("/a%20b", Ok("/a%20b")),
        ("/a%C0%AF", Err(PathError::InvalidPercentEncoding)),
        ("/a%FF", Err(PathError::InvalidPercentEncoding)),
        ("/a%C3/%A9", Err(PathError::InvalidPercentEncoding)),
        ("/a\u{1}b", Err(PathError::ControlCharacter)),
        ("/a\u{7f}", Err(PathError::ControlCharacter)),
        ("/a%1f", Err(PathError::ControlCharacter)),
        ("/a%7F", Err(PathError::ControlCharacter)),
        ("/a\nb", Err(PathError::ControlCharacter)),
        ("/a#b", Err(PathError::Fragment)),
        ("/a%23b", Ok("/a%23b")),
        ("api/x", Err(PathError::NotAbsolute)),
        ("*", Err(PathError::NotAbsolute)),
        ("", Err(PathError::NotAbsolute)),
        ("http://example.com/a", Err(PathError::NotAbsolute)),
        ("/a/%2e/b", Ok("/a/b")),
        ("/a/.%2e/b", Ok("/b")),
        ("/.hidden/x", Ok("/.hidden/x")),
        ("/a/...", Ok("/a/...")),
    ];

    #[test]
    fn table() {
        for (input, expected) in CASES {
            let got = normalize(input, MAX);
            let got = got.as_ref().map(NormalizedPath::as_str);
            assert_eq!(got, expected.as_ref().copied(), "input {input:?}");
        }
    }

    #[test]
    fn too_long() {
        let long = format!("/{}", "a".repeat(MAX));
        assert_eq!(normalize(&long, MAX), Err(PathError::TooLong { max: MAX }));
        let exact = format!("/{}", "a".repeat(MAX - 1));
        assert_eq!(normalize(&exact, MAX).unwrap().as_str(), exact);
        // Re-encoding can grow the path past the limit: the canonical form is checked too.
        assert_eq!(normalize("/\u{e9}", 4), Err(PathError::TooLong { max: 4 }));
    }

    #[test]
    fn fast_path_returns_input_unchanged() {
        for input in [
            "/",
            "/api/tickets/42",
            "/a/b/",
            "/a.b/c.d",
            "/x;y=z@:!$&'()*+,=",
        ] {
            assert_eq!(normalize(input, MAX).unwrap().as_str(), input);
        }
    }

    #[test]
    fn segments() {
        let p = normalize("/a/b/", MAX).unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["a", "b"]);
        let root = normalize("/", MAX).unwrap();
        assert_eq!(root.segments().count(), 0);
        let p = normalize("//x//y", MAX).unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["x", "y"]);
    }

    #[test]
    fn idempotent() {
        for (input, _) in CASES {
            if let Ok(once) = normalize(input, MAX) {
                let twice = normalize(once.as_str(), MAX);
                assert_eq!(twice.as_ref(), Ok(&once), "input {input:?}");
            }
        }
    }

    #[test]
    fn codes_are_stable_snake_case() {
        let all = [
            PathError::NotAbsolute,
            PathError::EncodedSlash,
            PathError::EncodedBackslash,
            PathError::Backslash,
            PathError::Nul,
            PathError::InvalidPercentEncoding,
            PathError::EscapesRoot,
            PathError::ControlCharacter,
            PathError::TooLong { max: 1 },
            PathError::Fragment,
            PathError::DotSegmentParameter,
            PathError::PathParameter,
        ];
        assert_eq!(PathError::EncodedSlash.code(), "encoded_slash");
        for e in all {
            let code = e.code();
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!e.to_string().is_empty());
        }
        assert!(PathError::TooLong { max: 8192 }
            .to_string()
            .contains("8192"));
    }

    #[test]
    fn parameters_are_found_literal_or_encoded_and_stripped_like_tomcat() {
        let cases = [
            ("/api/admin/users", false, "/api/admin/users"),
            ("/api/admin;x=1/users", true, "/api/admin/users"),
            ("/api/admin%3bx=1/users", true, "/api/admin/users"),
            ("/api/;x/users", true, "/api/users"),
            ("/api/admin;x/", true, "/api/admin/"),
            ("/api/admin/;x", true, "/api/admin/"),
            ("/;x", true, "/"),
        ];
        for (raw, has, stripped) in cases {
            let p = normalize(raw, MAX).unwrap();
            assert_eq!(p.has_parameters(), has, "{raw}");
            assert_eq!(p.without_parameters().as_str(), stripped, "{raw}");
        }
    }

    /// How a lenient upstream reads a raw path: decode every `%XX` once, fold `\` into `/`,
    /// drop `;` parameters from each segment, resolve dot segments (clamping at the root, as
    /// lenient servers do) and collapse `//`. Works on bytes, so invalid UTF-8 cannot hide.
    fn lenient_reading(raw: &str) -> Vec<u8> {
        let b = raw.as_bytes();
        let mut decoded = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hi = b.get(i + 1).copied().and_then(hex_value);
            let lo = b.get(i + 2).copied().and_then(hex_value);
            match (b[i], hi, lo) {
                (b'%', Some(h), Some(l)) => {
                    decoded.push((h << 4) | l);
                    i += 3;
                }
                (c, _, _) => {
                    decoded.push(if c == b'\\' { b'/' } else { c });
                    i += 1;
                }
            }
        }
        let mut out: Vec<&[u8]> = Vec::new();
        let mut trailing = false;
        for seg in decoded.split(|&c| c == b'/').skip(1) {
            let seg = seg.split(|&c| c == b';').next().unwrap_or(seg);
            match seg {
                b"" | b"." => trailing = true,
                b".." => {
                    out.pop();
                    trailing = true;
                }
                s => {
                    out.push(s);
                    trailing = false;
                }
            }
        }
        let mut path = Vec::new();
        for s in &out {
            path.push(b'/');
            path.extend_from_slice(s);
        }
        if path.is_empty() || trailing {
            path.push(b'/');
        }
        path
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// Whatever the gateway accepts, a lenient server reads the raw path, the path the
        /// route matched and the path forwarded as the same resource. With
        /// `path_parameters: allow` the route matches the path without parameters and the
        /// upstream receives it with them; by default a path with parameters is refused, and
        /// the route matches exactly what is forwarded.
        #[test]
        fn a_lenient_server_reads_what_the_route_matched(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "/", "/", "a", "B", "admin", ".", "..", ";", ";x=1", "%2e", "%2E%2e", "%3b",
                "%3B", "%2f", "%5c", "\\", "%41", "%61", "%25", "%", "//", "%C3%A9", "\u{e9}",
                "~", "=", "%00", "?", " ", "%3F", "%C0%AF", "\u{202e}",
            ]), 0..12)
        ) {
            let raw = format!("/{}", parts.concat());
            if let Ok(p) = normalize(&raw, MAX) {
                let lenient = lenient_reading(&raw);
                let matched = p.without_parameters();
                proptest::prop_assert_eq!(
                    &lenient_reading(matched.as_str()), &lenient, "raw {:?} matched {:?}", raw, matched
                );
                proptest::prop_assert_eq!(
                    &lenient_reading(p.as_str()), &lenient, "raw {:?} forwarded {:?}", raw, p
                );
                if !p.has_parameters() {
                    proptest::prop_assert_eq!(matched.as_str(), p.as_str());
                }
            }
        }
    }
}
