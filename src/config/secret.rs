//! `${env:NAME}` and `${file:PATH}` references in secret values, resolved at load time so a
//! missing secret is a config error, not a failed request later.

use regex::Regex;
use std::path::Path;
use std::sync::LazyLock;

static REF: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\$\{(env|file):([^}]+)\}").expect("static regex"));

/// Replace every reference in `value`. File contents are trimmed of a trailing newline;
/// relative file paths are relative to `base`.
pub fn resolve(value: &str, base: &Path) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut last = 0;
    for c in REF.captures_iter(value) {
        let m = c.get(0).expect("group 0 always exists");
        out.push_str(&value[last..m.start()]);
        let name = &c[2];
        let v = match &c[1] {
            "env" => std::env::var(name)
                .map_err(|_| format!("environment variable `{name}` is not set"))?,
            _ => {
                let p = base.join(name);
                std::fs::read_to_string(&p)
                    .map_err(|e| format!("cannot read secret file `{}`: {e}", p.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string()
            }
        };
        out.push_str(&v);
        last = m.end();
    }
    out.push_str(&value[last..]);
    if out.contains("${") {
        return Err("unrecognized `${...}` reference: use `${env:NAME}` or `${file:PATH}`".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_env_and_file_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "file-secret\n").unwrap();
        std::env::set_var("PORTCULLIS_TEST_SECRET_A", "env-secret");
        assert_eq!(
            resolve("Bearer ${env:PORTCULLIS_TEST_SECRET_A}", dir.path()).unwrap(),
            "Bearer env-secret"
        );
        assert_eq!(resolve("${file:k}", dir.path()).unwrap(), "file-secret");
        assert_eq!(resolve("plain", dir.path()).unwrap(), "plain");
        assert_eq!(
            resolve("${env:PORTCULLIS_TEST_SURELY_UNSET}", dir.path()).unwrap_err(),
            "environment variable `PORTCULLIS_TEST_SURELY_UNSET` is not set"
        );
        assert!(resolve("${file:missing}", dir.path())
            .unwrap_err()
            .starts_with("cannot read secret file"));
        assert!(resolve("${vault:x}", dir.path()).is_err());
    }
}
