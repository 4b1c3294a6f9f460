//! A signing keyring: the token service's ES256 keys over time, so the signing key can be
//! rotated without breaking the tokens the previous key already signed.
//!
//! On disk: a directory with one PKCS#8 PEM per key (mode 0600) and `keyring.json`, the
//! manifest naming each key's `kid`, file, creation time and, once replaced, retirement time.
//! The newest key that is not retired signs. A retired key still verifies (and is still
//! published in the JWKS) for the *overlap*, the longest a token it signed can live
//! (`identity.max_token_ttl` plus the clock skew); after that it is dropped, and the next
//! rotation deletes its file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::claims::now_unix;
use super::error::IdentityError;
use super::issue::generate_signing_key;

/// The manifest's file name inside the keyring directory.
pub const MANIFEST: &str = "keyring.json";

/// One key of a keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringKey {
    /// The `kid` its tokens carry.
    pub kid: String,
    /// The PEM file, relative to the keyring directory.
    pub file: String,
    /// When it was made, seconds since the epoch.
    pub created: u64,
    /// When a newer key replaced it, seconds since the epoch; `None` while it signs.
    #[serde(default)]
    pub retired: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    keys: Vec<KeyringKey>,
}

/// A loaded keyring.
#[derive(Debug, Clone)]
pub struct Keyring {
    dir: PathBuf,
    keys: Vec<KeyringKey>,
}

/// What [`Keyring::rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new signing key's `kid`.
    pub new_kid: String,
    /// The key it replaced, now retired (verifying until the overlap ends).
    pub retired_kid: Option<String>,
    /// Retired keys whose overlap had ended: removed from the manifest, files deleted.
    pub pruned: Vec<String>,
}

fn error(dir: &Path, what: impl std::fmt::Display) -> IdentityError {
    IdentityError::SigningKey(format!("keyring {}: {what}", dir.display()))
}

impl Keyring {
    /// Read the keyring in `dir`. It must hold at least one key that is not retired, and every
    /// key file it names must exist.
    pub fn load(dir: &Path) -> Result<Keyring, IdentityError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            error(
                dir,
                format!("cannot read {MANIFEST}: {e}; create it with `portcullis keys init`"),
            )
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| error(dir, format!("{MANIFEST} is not a keyring manifest: {e}")))?;
        let ring = Keyring {
            dir: dir.to_owned(),
            keys: manifest.keys,
        };
        if ring.keys.iter().all(|k| k.retired.is_some()) {
            return Err(error(dir, "no key is active (every key is retired)"));
        }
        for k in &ring.keys {
            if k.file.contains('/') || k.file.contains("..") {
                return Err(error(
                    dir,
                    format!("key `{}`: file must be a plain name", k.kid),
                ));
            }
            if !ring.path_of(k).is_file() {
                return Err(error(
                    dir,
                    format!("key `{}`: {} is missing", k.kid, k.file),
                ));
            }
        }
        Ok(ring)
    }

    /// Create a keyring with one fresh key in `dir` (made if missing). Refuses when a manifest
    /// is already there: an existing keyring is rotated, never replaced.
    pub fn init(dir: &Path, prefix: &str) -> Result<Keyring, IdentityError> {
        if dir.join(MANIFEST).exists() {
            return Err(error(
                dir,
                "already initialised; use `portcullis keys rotate`",
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| error(dir, e))?;
        let mut ring = Keyring {
            dir: dir.to_owned(),
            keys: Vec::new(),
        };
        ring.add_key(prefix, now_unix())?;
        ring.save()?;
        Ok(ring)
    }

    /// Make a new signing key, retire the current one at `now`, and drop retired keys whose
    /// overlap has ended (`retired + overlap <= now`).
    pub fn rotate(
        dir: &Path,
        prefix: &str,
        now: u64,
        overlap: std::time::Duration,
    ) -> Result<Rotation, IdentityError> {
        let mut ring = Keyring::load(dir)?;
        let retired_kid = ring.active().map(|k| k.kid.clone());
        for k in ring.keys.iter_mut().filter(|k| k.retired.is_none()) {
            k.retired = Some(now);
        }
        let new_kid = ring.add_key(prefix, now)?;
        let (keep, gone): (Vec<_>, Vec<_>) = ring.keys.drain(..).partition(|k| match k.retired {
            Some(r) => r.saturating_add(overlap.as_secs()) > now,
            None => true,
        });
        ring.keys = keep;
        ring.save()?;
        for k in &gone {
            // The manifest no longer names it; a leftover file is harmless but untidy.
            let _ = std::fs::remove_file(ring.dir.join(&k.file));
        }
        Ok(Rotation {
            new_kid,
            retired_kid,
            pruned: gone.into_iter().map(|k| k.kid).collect(),
        })
    }

    /// The key that signs: the newest one not retired.
    pub fn active(&self) -> Option<&KeyringKey> {
        self.keys
            .iter()
            .filter(|k| k.retired.is_none())
            .max_by_key(|k| k.created)
    }

    /// Keys that still verify at `now`: the active ones, and retired ones within `overlap`.
    pub fn verifying(
        &self,
        now: u64,
        overlap: std::time::Duration,
    ) -> impl Iterator<Item = &KeyringKey> {
        self.keys.iter().filter(move |k| match k.retired {
            Some(r) => r.saturating_add(overlap.as_secs()) > now,
            None => true,
        })
    }

    /// Every key of the manifest.
    pub fn keys(&self) -> &[KeyringKey] {
        &self.keys
    }

    /// Where a key's PEM lives.
    pub fn path_of(&self, key: &KeyringKey) -> PathBuf {
        self.dir.join(&key.file)
    }

    fn add_key(&mut self, prefix: &str, now: u64) -> Result<String, IdentityError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let pem = generate_signing_key()?;
        // The time orders keys for people; the random tail keeps two rotations in one second
        // apart.
        let kid = format!(
            "{prefix}-{now}-{}",
            &super::issue::random_jti()?.replace('-', "")[..6]
        );
        let file = format!("{kid}.pem");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(&file))
            .and_then(|mut f| f.write_all(pem.as_bytes()))
            .map_err(|e| error(&self.dir, format!("cannot write {file}: {e}")))?;
        self.keys.push(KeyringKey {
            kid: kid.clone(),
            file,
            created: now,
            retired: None,
        });
        Ok(kid)
    }

    /// Replace the manifest atomically (write a temporary file, then rename), so a gateway
    /// reloading at the same moment reads the old or the new one, never half of one.
    fn save(&self) -> Result<(), IdentityError> {
        let manifest = Manifest {
            keys: self.keys.clone(),
        };
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| error(&self.dir, e))?;
        let tmp = self.dir.join(format!(".{MANIFEST}.tmp"));
        std::fs::write(&tmp, text + "\n").map_err(|e| error(&self.dir, e))?;
        std::fs::rename(&tmp, self.dir.join(MANIFEST)).map_err(|e| error(&self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rotation_retires_then_prunes_after_the_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::init(dir.path(), "gw").unwrap();
        let first = ring.active().unwrap().kid.clone();
        assert!(Keyring::init(dir.path(), "gw").is_err(), "init twice");

        let hour = Duration::from_secs(3600);
        let r = Keyring::rotate(dir.path(), "gw", 1_000, hour).unwrap();
        assert_eq!(r.retired_kid.as_deref(), Some(first.as_str()));
        assert!(r.pruned.is_empty());
        let ring = Keyring::load(dir.path()).unwrap();
        assert_eq!(ring.active().unwrap().kid, r.new_kid);
        let live: Vec<_> = ring.verifying(1_000 + 3599, hour).map(|k| &k.kid).collect();
        assert_eq!(live.len(), 2, "old key verifies during the overlap");
        let live: Vec<_> = ring.verifying(1_000 + 3600, hour).map(|k| &k.kid).collect();
        assert_eq!(live, vec![&r.new_kid], "and not after it");

        let r2 = Keyring::rotate(dir.path(), "gw", 1_000 + 3600, hour).unwrap();
        assert_eq!(r2.pruned, vec![first.clone()]);
        assert!(!dir.path().join(format!("{first}.pem")).exists());
        assert_eq!(Keyring::load(dir.path()).unwrap().keys().len(), 2);
    }

    #[test]
    fn a_keyring_with_no_active_key_or_a_missing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::init(dir.path(), "gw").unwrap();
        let key = ring.active().unwrap().clone();
        std::fs::remove_file(ring.path_of(&key)).unwrap();
        let e = Keyring::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is missing"), "{e}");

        std::fs::write(
            dir.path().join(MANIFEST),
            r#"{"keys":[{"kid":"a","file":"a.pem","created":1,"retired":2}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("a.pem"), "x").unwrap();
        let e = Keyring::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no key is active"), "{e}");
    }
}
