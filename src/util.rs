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
