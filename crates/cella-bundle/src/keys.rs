//! Tenant signing keys: ed25519, kept in the user's config directory (the secret file readable
//! by its owner only) and named by a short id, the start of the SHA-256 of the public key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const SECRET_PREFIX: &str = "cella-ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} already exists; pick another --name, or remove it if you mean to replace the key \
         (bundles signed with it then need a key you still have)"
    )]
    Exists(PathBuf),
    #[error("{what} is not a cella ed25519 key (expected `{expected}` and 64 hex digits)")]
    Malformed {
        what: String,
        expected: &'static str,
    },
}

/// A tenant's secret signing key.
pub struct SigningKey(ed25519_dalek::SigningKey);

/// A tenant's public key, as registered with a platform: `ed25519:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey(pub(crate) ed25519_dalek::VerifyingKey);

/// A key's short name: `ed25519:` and the first 16 hex digits of SHA-256(public key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

/// The 32 key bytes of `<prefix><64 hex digits>`.
fn key_bytes(text: &str, prefix: &str) -> Option<[u8; 32]> {
    let hex_digits = text.trim().strip_prefix(prefix)?;
    hex::decode(hex_digits).ok()?.try_into().ok()
}

impl SigningKey {
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random number generator");
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&secret))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Writes `<dir>/<name>.key` (mode 0600) and `<dir>/<name>.pub`; refuses to overwrite.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KeyError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let secret = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(KeyError::Exists(secret));
            }
            Err(e) => return Err(io(&secret)(e)),
        };
        writeln!(file, "{SECRET_PREFIX}{}", hex::encode(self.0.to_bytes())).map_err(io(&secret))?;
        std::fs::write(&public, format!("{}\n", self.verifying_key())).map_err(io(&public))?;
        Ok((secret, public))
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        let malformed = || KeyError::Malformed {
            what: path.display().to_string(),
            expected: SECRET_PREFIX,
        };
        let bytes = key_bytes(&text, SECRET_PREFIX).ok_or_else(malformed)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&bytes)))
    }
}

impl VerifyingKey {
    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.as_bytes());
        KeyId(format!("{PUBLIC_PREFIX}{}", hex::encode(&digest[..8])))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(VerifyingKey)
            .map_err(|_| KeyError::Malformed {
                what: "the public key".into(),
                expected: PUBLIC_PREFIX,
            })
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

impl FromStr for VerifyingKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, KeyError> {
        let malformed = || KeyError::Malformed {
            what: format!("`{}`", text.chars().take(80).collect::<String>()),
            expected: PUBLIC_PREFIX,
        };
        let bytes = key_bytes(text, PUBLIC_PREFIX).ok_or_else(malformed)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| malformed())
    }
}

impl Serialize for VerifyingKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VerifyingKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_save_load_and_print() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let (secret, public) = key.save(dir.path(), "default").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            key.save(dir.path(), "default"),
            Err(KeyError::Exists(_))
        ));
        let loaded = SigningKey::load(&secret).unwrap();
        assert_eq!(loaded.verifying_key(), key.verifying_key());
        let text = std::fs::read_to_string(public).unwrap();
        let parsed: VerifyingKey = text.parse().unwrap();
        assert_eq!(parsed, key.verifying_key());
        assert!(parsed.id().as_str().starts_with("ed25519:"));
        assert_eq!(parsed.id().as_str().len(), "ed25519:".len() + 16);
        assert!("ed25519:zz".parse::<VerifyingKey>().is_err());
    }
}
