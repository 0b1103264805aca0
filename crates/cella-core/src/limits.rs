//! Per-function resource limits. Every limit has a platform default, may be set per function at
//! deploy time, and may never exceed the platform maximum (invariant 6).

use std::time::Duration;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;

/// The limits one invocation runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock deadline for one invocation, in milliseconds.
    pub timeout_ms: u64,
    /// Linear memory the guest may grow to, in bytes (all memories together).
    pub memory_bytes: u64,
    /// Response body the guest may produce, in bytes.
    pub output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 5_000,
            memory_bytes: 128 * MIB,
            output_bytes: 6 * MIB,
        }
    }
}

impl Limits {
    /// The most any function may ask for unless the operator raises it.
    pub fn default_maximum() -> Self {
        Limits {
            timeout_ms: 60_000,
            memory_bytes: 1024 * MIB,
            output_bytes: 64 * MIB,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `defaults` with `requested` applied, checked against `maximum`.
    pub fn resolve(
        defaults: &Limits,
        requested: &LimitsOverride,
        maximum: &Limits,
    ) -> Result<Limits, LimitError> {
        let limits = Limits {
            timeout_ms: requested.timeout_ms.unwrap_or(defaults.timeout_ms),
            memory_bytes: requested.memory_bytes.unwrap_or(defaults.memory_bytes),
            output_bytes: requested.output_bytes.unwrap_or(defaults.output_bytes),
        };
        let checks = [
            ("timeout_ms", limits.timeout_ms, maximum.timeout_ms),
            ("memory_bytes", limits.memory_bytes, maximum.memory_bytes),
            ("output_bytes", limits.output_bytes, maximum.output_bytes),
        ];
        for (name, value, max) in checks {
            if value == 0 {
                return Err(LimitError::Zero { name });
            }
            if value > max {
                return Err(LimitError::AboveMaximum { name, value, max });
            }
        }
        Ok(limits)
    }
}

/// Limits asked for at deploy time; anything left out takes the platform default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub timeout_ms: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub output_bytes: Option<u64>,
}

impl LimitsOverride {
    /// Parses one `key=value` setting as written on a command line: `timeout=2s`,
    /// `memory=64MiB`, `output=1MiB` (or the `*_ms`/`*_bytes` names with plain numbers).
    pub fn set(&mut self, setting: &str) -> Result<(), LimitError> {
        let bad = || LimitError::Setting(setting.chars().take(80).collect());
        let (key, value) = setting.split_once('=').ok_or_else(bad)?;
        match key.trim() {
            "timeout" | "timeout_ms" => {
                let value = value.trim();
                let ms = match value.parse::<u64>() {
                    Ok(ms) => ms,
                    Err(_) => humantime::parse_duration(value)
                        .map_err(|_| bad())?
                        .as_millis() as u64,
                };
                self.timeout_ms = Some(ms);
            }
            "memory" | "memory_bytes" => {
                self.memory_bytes = Some(parse_size(value).ok_or_else(bad)?)
            }
            "output" | "output_bytes" => {
                self.output_bytes = Some(parse_size(value).ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        }
        Ok(())
    }
}

/// Parses a byte size: `1048576`, `512KiB`, `64MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => MIB,
        "GiB" | "G" => 1024 * MIB,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("limit `{name}` must be greater than zero")]
    Zero { name: &'static str },
    #[error(
        "limit `{name}` = {value} is above this platform's maximum of {max}; ask for at most {max} \
         (the operator sets maxima in cella.toml under [limits.maximum])"
    )]
    AboveMaximum {
        name: &'static str,
        value: u64,
        max: u64,
    },
    #[error(
        "limit setting `{0}` is not understood; write `timeout=2s`, `memory=64MiB` or `output=1MiB`"
    )]
    Setting(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("1048576"), Some(MIB));
        assert_eq!(parse_size("64MiB"), Some(64 * MIB));
        assert_eq!(parse_size("512KiB"), Some(512 * 1024));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }

    #[test]
    fn settings_override_defaults_within_maximum() {
        let mut o = LimitsOverride::default();
        o.set("timeout=250ms").unwrap();
        o.set("memory=16MiB").unwrap();
        let l = Limits::resolve(&Limits::default(), &o, &Limits::default_maximum()).unwrap();
        assert_eq!(l.timeout_ms, 250);
        assert_eq!(l.memory_bytes, 16 * MIB);
        assert_eq!(l.output_bytes, Limits::default().output_bytes);

        o.set("timeout=1h").unwrap();
        let err = Limits::resolve(&Limits::default(), &o, &Limits::default_maximum()).unwrap_err();
        assert!(
            err.to_string().contains("above this platform's maximum"),
            "{err}"
        );
        assert!(o.set("colour=blue").is_err());
    }
}
