//! What a function may use besides its input and output: the permissions its manifest grants.
//! Everything is denied unless granted. Standard input and output (the request and the
//! response) and standard error (the owner's log) are the calling convention, not
//! permissions: they reach only the caller and the owner.
//!
//! Two kinds of permission, by what an ungranted one would give:
//! - **Ambient** ones give something out of nothing — the time, randomness, persistent state.
//!   A module that *imports* them needs them: the platform checks at deploy and refuses the
//!   function with the manifest line that would grant each one.
//! - **Harmless when empty** ones only reach what was handed over: the environment holds only
//!   the variables the manifest names (and the owner set). Every WASI program imports
//!   `environ_get`, so importing it is no request; what it yields is. Outgoing HTTP is judged
//!   the same way, per request: every request names its host, and only hosts on the
//!   manifest's `http` list are reached. Every component imports the file system interfaces
//!   too; only a `scratch_mib` grant puts a directory behind them.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Most environment variables one function may name.
pub const MAX_ENV_VARS: usize = 32;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// Largest scratch file system one invocation may ask for, in MiB. It lives in the node's
/// memory, beside the guest's own.
pub const MAX_SCRATCH_MIB: u32 = 256;

/// The permissions of one function, as its manifest's `[permissions]` table says:
///
/// ```toml
/// [permissions]
/// clocks = true            # wall-clock and monotonic time
/// random = true            # secure random bytes
/// kv = true                # the function's sealed key-value state
/// env = ["GREETING"]       # these environment variables (values set by the owner)
/// http = ["api.example.com", "*.example.org", "example.net:8443"]   # outgoing HTTPS
/// scratch_mib = 16         # a private in-memory /tmp of 16 MiB per invocation (components)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    #[serde(default)]
    pub clocks: bool,
    #[serde(default)]
    pub random: bool,
    #[serde(default)]
    pub kv: bool,
    #[serde(default)]
    pub env: BTreeSet<EnvName>,
    #[serde(default)]
    pub http: BTreeSet<HttpHost>,
    /// MiB of private scratch files per invocation; 0 (the default) gives none. Left out of
    /// encodings when 0, so manifests written before it existed keep their hashes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scratch_mib: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Permissions {
    pub fn grants(&self, permission: &Permission) -> bool {
        match permission {
            Permission::Clocks => self.clocks,
            Permission::Random => self.random,
            Permission::Kv => self.kv,
            Permission::Env(name) => self.env.contains(name),
            Permission::Http(host) => self.http.contains(host),
            Permission::Scratch(mib) => self.scratch_mib >= *mib,
        }
    }

    /// The bytes of the scratch file system each invocation gets, if any.
    pub fn scratch_bytes(&self) -> Option<u64> {
        (self.scratch_mib > 0).then(|| u64::from(self.scratch_mib) * 1024 * 1024)
    }

    /// Whether an outgoing request to `host` on `port` (HTTPS) is allowed.
    pub fn allows_http(&self, host: &str, port: u16) -> bool {
        self.http.iter().any(|pattern| pattern.matches(host, port))
    }

    /// Grants `permission` (for building manifests from the command line).
    pub fn grant(&mut self, permission: Permission) {
        match permission {
            Permission::Clocks => self.clocks = true,
            Permission::Random => self.random = true,
            Permission::Kv => self.kv = true,
            Permission::Env(name) => {
                self.env.insert(name);
            }
            Permission::Http(host) => {
                self.http.insert(host);
            }
            Permission::Scratch(mib) => self.scratch_mib = self.scratch_mib.max(mib),
        }
    }

    /// Refuses more environment variables than a function may have.
    pub fn validate(&self) -> Result<(), PermissionError> {
        if self.env.len() > MAX_ENV_VARS {
            return Err(PermissionError::TooManyEnvVars(self.env.len()));
        }
        if self.http.len() > MAX_HTTP_HOSTS {
            return Err(PermissionError::TooManyHosts(self.http.len()));
        }
        if self.scratch_mib > MAX_SCRATCH_MIB {
            return Err(PermissionError::ScratchTooLarge(self.scratch_mib));
        }
        Ok(())
    }

    /// The permissions as short words (`clocks`, `random`, `kv`, `env=NAME`), for listings.
    pub fn words(&self) -> Vec<String> {
        let mut words: Vec<String> = [
            (self.clocks, Permission::Clocks),
            (self.random, Permission::Random),
            (self.kv, Permission::Kv),
        ]
        .into_iter()
        .filter(|(granted, _)| *granted)
        .map(|(_, p)| p.to_string())
        .collect();
        words.extend(self.env.iter().map(|n| format!("env={n}")));
        words.extend(self.http.iter().map(|h| format!("http={h}")));
        if self.scratch_mib > 0 {
            words.push(Permission::Scratch(self.scratch_mib).to_string());
        }
        words
    }
}

/// One permission, as `cella deploy --allow` spells it: `clocks`, `random`, `kv`, `env=NAME`,
/// `http=HOST`, `scratch=MIB`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Clocks,
    Random,
    Kv,
    Env(EnvName),
    Http(HttpHost),
    /// A private scratch file system of this many MiB.
    Scratch(u32),
}

impl Permission {
    /// The manifest line that grants it, under `[permissions]`.
    pub fn manifest_line(&self) -> String {
        match self {
            Permission::Clocks => "clocks = true".into(),
            Permission::Random => "random = true".into(),
            Permission::Kv => "kv = true".into(),
            Permission::Env(name) => format!("env = [\"{name}\"]"),
            Permission::Http(host) => format!("http = [\"{host}\"]"),
            Permission::Scratch(mib) => format!("scratch_mib = {mib}"),
        }
    }

    /// What it gives, in a few words.
    pub fn describe(&self) -> &'static str {
        match self {
            Permission::Clocks => "the time",
            Permission::Random => "random bytes",
            Permission::Kv => "sealed key-value state",
            Permission::Env(_) => "an environment variable",
            Permission::Http(_) => "outgoing HTTPS to a host",
            Permission::Scratch(_) => "a private scratch file system",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permission::Clocks => f.write_str("clocks"),
            Permission::Random => f.write_str("random"),
            Permission::Kv => f.write_str("kv"),
            Permission::Env(name) => write!(f, "env={name}"),
            Permission::Http(host) => write!(f, "http={host}"),
            Permission::Scratch(mib) => write!(f, "scratch={mib}"),
        }
    }
}

impl std::str::FromStr for Permission {
    type Err = PermissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "clocks" => Ok(Permission::Clocks),
            "random" => Ok(Permission::Random),
            "kv" => Ok(Permission::Kv),
            _ => {
                if let Some(name) = s.strip_prefix("env=") {
                    Ok(Permission::Env(EnvName::new(name)?))
                } else if let Some(host) = s.strip_prefix("http=") {
                    Ok(Permission::Http(HttpHost::new(host)?))
                } else if let Some(mib) = s.strip_prefix("scratch=") {
                    match mib.parse::<u32>() {
                        Ok(mib @ 1..=MAX_SCRATCH_MIB) => Ok(Permission::Scratch(mib)),
                        Ok(mib) => Err(PermissionError::ScratchTooLarge(mib)),
                        Err(_) => Err(PermissionError::ScratchSize(shown(mib))),
                    }
                } else {
                    Err(PermissionError::Unknown(shown(s)))
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error(
        "`{0}` is not a permission; use `clocks`, `random`, `kv`, `env=NAME`, `http=HOST` or \
         `scratch=MIB` (sockets and the host's files are not offered)"
    )]
    Unknown(String),
    #[error(
        "`{0}` is not a scratch size; use whole MiB from 1 to {MAX_SCRATCH_MIB}, for example \
         `scratch=16`"
    )]
    ScratchSize(String),
    #[error(
        "a scratch file system of {0} MiB is not offered; use 1 to {MAX_SCRATCH_MIB} MiB \
         (`scratch_mib` in [permissions])"
    )]
    ScratchTooLarge(u32),
    #[error(
        "`{0}` is not an HTTP host to allow; use a DNS name, optionally with `*.` in front (its \
         subdomains) and `:PORT` after (default 443), for example `api.example.com` or \
         `*.example.org:8443` (only HTTPS is offered, and addresses are not names)"
    )]
    HttpHost(String),
    #[error("the manifest names {0} HTTP hosts; at most {MAX_HTTP_HOSTS} are allowed")]
    TooManyHosts(usize),
    #[error(
        "environment variable name `{0}` is invalid; use 1-64 ASCII letters, digits and `_`, \
         not starting with a digit (for example `API_URL`)"
    )]
    EnvName(String),
    #[error("the manifest names {0} environment variables; at most {MAX_ENV_VARS} are allowed")]
    TooManyEnvVars(usize),
}

/// An environment variable's name: what POSIX shells accept, so no `=` or NUL can split it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvName(String);

impl EnvName {
    pub fn new(name: &str) -> Result<Self, PermissionError> {
        let valid = (1..=64).contains(&name.len())
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match valid {
            true => Ok(EnvName(name.to_owned())),
            false => Err(PermissionError::EnvName(shown(name))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EnvName {
    type Error = PermissionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        EnvName::new(&value)
    }
}

impl From<EnvName> for String {
    fn from(value: EnvName) -> Self {
        value.0
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Most HTTP hosts one function may name.
pub const MAX_HTTP_HOSTS: usize = 32;

/// A host outgoing HTTPS may reach: a DNS name (lowercase), or `*.` and a name for its
/// subdomains, and a port (443 unless given). IP addresses are refused: TLS names hosts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpHost(String);

impl HttpHost {
    pub fn new(text: &str) -> Result<Self, PermissionError> {
        let bad = || PermissionError::HttpHost(shown(text));
        let lower = text.to_ascii_lowercase();
        let (name, port) = match lower.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (lower.as_str(), None),
        };
        if let Some(port) = port
            && !matches!(port.parse::<u16>(), Ok(p) if p > 0)
        {
            return Err(bad());
        }
        let bare = name.strip_prefix("*.").unwrap_or(name);
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let labels: Vec<&str> = bare.split('.').collect();
        let is_address = labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()));
        if bare.len() > 253 || !labels.iter().all(|l| label_ok(l)) || is_address {
            return Err(bad());
        }
        Ok(HttpHost(lower))
    }

    /// Whether a request to `host`:`port` is to this host (or, for `*.name`, a subdomain).
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let (name, allowed_port) = match self.0.rsplit_once(':') {
            Some((name, p)) => (name, p.parse().unwrap_or(0)),
            None => (self.0.as_str(), 443),
        };
        if port != allowed_port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        match name.strip_prefix("*.") {
            Some(parent) => host
                .strip_suffix(parent)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == name,
        }
    }
}

impl TryFrom<String> for HttpHost {
    type Error = PermissionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        HttpHost::new(&value)
    }
}

impl From<HttpHost> for String {
    fn from(value: HttpHost) -> Self {
        value.0
    }
}

impl fmt::Display for HttpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A short, printable prefix of untrusted text for an error message.
fn shown(text: &str) -> String {
    text.chars()
        .take(65)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_from_words_and_name_their_manifest_line() {
        let env: Permission = "env=API_URL".parse().unwrap();
        assert_eq!(env.manifest_line(), "env = [\"API_URL\"]");
        assert_eq!("clocks".parse::<Permission>().unwrap(), Permission::Clocks);
        let mut granted = Permissions::default();
        granted.grant(env.clone());
        granted.grant(Permission::Kv);
        assert!(granted.grants(&env) && granted.grants(&Permission::Kv));
        assert!(!granted.grants(&Permission::Clocks));
        assert_eq!(granted.words(), ["kv", "env=API_URL"]);

        let scratch: Permission = "scratch=16".parse().unwrap();
        assert_eq!(scratch.manifest_line(), "scratch_mib = 16");
        granted.grant(scratch.clone());
        assert!(granted.grants(&scratch) && !granted.grants(&Permission::Scratch(17)));
        assert_eq!(granted.scratch_bytes(), Some(16 << 20));
        assert_eq!(granted.words(), ["kv", "env=API_URL", "scratch=16"]);
        assert_eq!(Permissions::default().scratch_bytes(), None);
    }

    #[test]
    fn a_manifest_without_scratch_encodes_as_before() {
        let granted = Permissions {
            kv: true,
            ..Permissions::default()
        };
        let json = serde_json::to_string(&granted).unwrap();
        assert!(!json.contains("scratch"), "{json}");
        let read: Permissions = serde_json::from_str(&json).unwrap();
        assert_eq!(read, granted);
    }

    #[test]
    fn bad_permissions_say_what_is_allowed() {
        for bad in [
            "net",
            "env=",
            "env=1X",
            "env=A=B",
            "env=A\0",
            "files",
            "scratch=",
            "scratch=x",
            "scratch=0",
            "scratch=257",
        ] {
            let err = bad.parse::<Permission>().unwrap_err().to_string();
            assert!(err.contains("use"), "{bad}: {err}");
        }
        let many = Permissions {
            env: (0..33)
                .map(|i| EnvName::new(&format!("V{i}")).unwrap())
                .collect(),
            ..Permissions::default()
        };
        assert!(matches!(
            many.validate(),
            Err(PermissionError::TooManyEnvVars(33))
        ));
        let huge = Permissions {
            scratch_mib: MAX_SCRATCH_MIB + 1,
            ..Permissions::default()
        };
        assert!(matches!(
            huge.validate(),
            Err(PermissionError::ScratchTooLarge(257))
        ));
    }

    #[test]
    fn http_hosts_match_names_subdomains_and_ports_only() {
        let host = |h: &str| HttpHost::new(h).unwrap();
        assert!(host("API.example.com").matches("api.example.com", 443));
        assert!(!host("api.example.com").matches("api.example.com", 80));
        assert!(!host("api.example.com").matches("evil-api.example.com", 443));
        assert!(!host("api.example.com").matches("api.example.com.evil.net", 443));
        assert!(host("example.net:8443").matches("example.net", 8443));
        let wild = host("*.example.org");
        assert!(wild.matches("a.example.org", 443) && wild.matches("a.b.example.org", 443));
        assert!(!wild.matches("example.org", 443) && !wild.matches("badexample.org", 443));
        for bad in [
            "127.0.0.1",
            "10.0.0.1:443",
            "",
            "a..b",
            "-a.com",
            "a.com:0",
            "a.com:x",
            "*",
        ] {
            assert!(HttpHost::new(bad).is_err(), "{bad}");
        }
        let permission: Permission = "http=api.example.com".parse().unwrap();
        assert_eq!(permission.manifest_line(), "http = [\"api.example.com\"]");
    }

    #[test]
    fn unknown_permissions_in_a_manifest_are_refused() {
        let err = serde_json::from_str::<Permissions>(r#"{"network":true}"#).unwrap_err();
        assert!(err.to_string().contains("network"), "{err}");
    }
}
