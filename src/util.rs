//! Small helpers shared across modules.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock a mutex even if a panic elsewhere poisoned it. Every critical section in this crate is
/// a short, self-consistent update (a map insert, an assignment), so the data behind a
/// poisoned lock is still valid, and one panicked task must not take the gateway down with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `error: cause: cause`, since many errors (reqwest's among them) hide the reason in their
/// source chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Milliseconds since the Unix epoch (negative before it, saturating far outside).
pub fn unix_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The password of a URL (`scheme://user:password@host/...`), raw and percent-decoded: what to
/// scrub from error texts that might echo it (drivers sometimes quote the URL they failed on).
pub fn url_secrets(url: &str) -> Vec<String> {
    let (Some(s), Some(at)) = (url.find("://"), url.rfind('@')) else {
        return Vec::new();
    };
    if at <= s {
        return Vec::new();
    }
    let Some((_, password)) = url[s + 3..at].split_once(':') else {
        return Vec::new();
    };
    let mut out = vec![password.to_owned()];
    if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
        out.push(decoded.into_owned());
    }
    out.retain(|p| !p.is_empty());
    out
}

/// `text` with every occurrence of a secret replaced by `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

/// Append `ip` in its usual text form. IPv4, the common case on the proxy path (the client's
/// address goes into `X-Forwarded-For` and the access log on every call), is written by hand:
/// std's `Display` formats into a stack buffer and then through `Formatter`'s padding logic,
/// about ten times the work. IPv6 goes through `Display`.
pub fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => push_ipv4(out, v4),
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Append `addr` as `Display` writes it (`1.2.3.4:80`, `[::1]:80`), IPv4 by hand (see [`push_ip`]).
pub fn push_socket_addr(out: &mut String, addr: &std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(a) => {
            push_ipv4(out, *a.ip());
            out.push(':');
            push_decimal(out, u32::from(a.port()));
        }
        std::net::SocketAddr::V6(a) => {
            use std::fmt::Write;
            let _ = write!(out, "{a}");
        }
    }
}

fn push_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    let [a, b, c, d] = ip.octets();
    push_decimal(out, u32::from(a));
    out.push('.');
    push_decimal(out, u32::from(b));
    out.push('.');
    push_decimal(out, u32::from(c));
    out.push('.');
    push_decimal(out, u32::from(d));
}

fn push_decimal(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
}

#[cfg(test)]
mod address_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn addresses_are_written_exactly_as_display_writes_them(
            v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>(), port in any::<u16>()
        ) {
            let ip4 = std::net::IpAddr::from(v4);
            let ip6 = std::net::IpAddr::from(v6);
            for ip in [ip4, ip6] {
                let mut s = String::from("x");
                push_ip(&mut s, ip);
                prop_assert_eq!(s, format!("x{ip}"));
                let sa = std::net::SocketAddr::new(ip, port);
                let mut s = String::new();
                push_socket_addr(&mut s, &sa);
                prop_assert_eq!(s, sa.to_string());
            }
        }
    }
}
