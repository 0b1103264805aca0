//! Tenant and function names. They appear in URLs, storage keys and log lines, so they are
//! restricted to a DNS-label-like alphabet: nothing that could traverse a path, break a URL or
//! smuggle a control character can get through.

use std::fmt;

use serde::{Deserialize, Serialize};

const MAX_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} name `{shown}` is invalid: {reason}; use 1-63 characters of lowercase letters, \
     digits and `-`, starting with a letter (for example `image-resize`)"
)]
pub struct NameError {
    what: &'static str,
    shown: String,
    reason: &'static str,
}

fn validate(what: &'static str, name: &str) -> Result<(), NameError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_LEN {
        Some("it is longer than 63 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it does not start with a lowercase letter")
    } else if name.ends_with('-') {
        Some("it ends with `-`")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some("it contains a character other than a-z, 0-9 and `-`")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(NameError {
            what,
            // Echo at most a short, printable prefix of what was sent: never reflect control
            // characters or megabytes of input into an error message.
            shown: name
                .chars()
                .take(MAX_LEN + 1)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
            reason,
        }),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($what, &name)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(name: String) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(name: &str) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad` honours width and alignment, so names line up in tables.
                f.pad(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a tenant: the owner of functions and the holder of a token.
    TenantName,
    "tenant"
);
name_type!(
    /// The name of a plug-in the operator registered (`quickjs`).
    PluginName,
    "plug-in"
);
name_type!(
    /// The name of a deployed function. Function names are global on a cella platform (like
    /// bucket names): the first tenant to deploy a name owns it.
    FunctionName,
    "function"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_label_like_names() {
        for ok in ["a", "brotli", "image-resize", "f2", &"x".repeat(63)] {
            assert!(FunctionName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_traversal_and_odd_characters_with_a_fix() {
        for bad in [
            "",
            "../etc",
            "a/b",
            "A",
            "1abc",
            "a-",
            "a b",
            "a\n",
            "é",
            &"x".repeat(64),
        ] {
            let err = FunctionName::new(bad).unwrap_err().to_string();
            assert!(err.contains("use 1-63 characters"), "{bad}: {err}");
            assert!(
                !err.contains('\n'),
                "control characters are not echoed: {err}"
            );
        }
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<TenantName>("\"../x\"").is_err());
        assert_eq!(
            serde_json::from_str::<TenantName>("\"acme\"")
                .unwrap()
                .as_str(),
            "acme"
        );
    }
}
