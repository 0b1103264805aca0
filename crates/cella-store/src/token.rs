//! Bearer tokens. A token is 32 random bytes shown once at creation; the registry stores only
//! its SHA-256, so a leaked registry does not leak credentials. Tokens are high-entropy, so a
//! fast hash is enough (no password-stretching needed).

use std::fmt;

use cella_core::TenantName;
use sha2::{Digest, Sha256};

const PREFIX: &str = "cella_";

/// A freshly issued token: the only time its secret exists outside the client.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub(crate) fn generate() -> Self {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random number generator");
        Token(format!("{PREFIX}{}", hex::encode(secret)))
    }

    pub fn secret(&self) -> &str {
        &self.0
    }

    pub(crate) fn hash(&self) -> [u8; 32] {
        hash_secret(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

pub(crate) fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Who a request is from, once its token has been checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The operator: manages tenants, owns no functions and sees no tenant's data.
    Admin,
    Tenant(TenantName),
}

impl Principal {
    pub(crate) fn encode(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Tenant(name) => format!("tenant:{name}"),
        }
    }

    pub(crate) fn decode(text: &str) -> Option<Self> {
        match text.split_once(':') {
            None if text == "admin" => Some(Principal::Admin),
            Some(("tenant", name)) => TenantName::new(name).ok().map(Principal::Tenant),
            _ => None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin => f.write_str("admin"),
            Principal::Tenant(name) => write!(f, "tenant `{name}`"),
        }
    }
}
