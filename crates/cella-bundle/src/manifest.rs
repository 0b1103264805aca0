//! What a bundle says about its payload. Authors write TOML ([`ManifestFile`]); the bundle
//! carries the canonical form ([`Manifest`]), whose JSON encoding is unique for its content.

use cella_core::{ContentHash, FunctionName, LimitsOverride, Permissions};
use serde::{Deserialize, Serialize};

/// How the payload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BundleKind {
    /// A WASI preview 1 command module: input on stdin, output on stdout.
    WasiCommand,
    /// A `wasi:http/proxy` component.
    WasiHttp,
    /// JavaScript source run by a JavaScript plug-in.
    Js,
}

impl BundleKind {
    /// Guesses the kind of a WebAssembly payload from its header: a core module is a WASI
    /// command, a component a `wasi:http` proxy (the platform checks either way at deploy).
    pub fn detect(payload: &[u8]) -> Option<BundleKind> {
        match payload.get(..8)? {
            [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(BundleKind::WasiCommand),
            [0, b'a', b's', b'm', 0x0d, 0, 1, 0] => Some(BundleKind::WasiHttp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BundleKind::WasiCommand => "wasi-command",
            BundleKind::WasiHttp => "wasi-http",
            BundleKind::Js => "js",
        }
    }
}

impl std::fmt::Display for BundleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plug-in the function needs, by name and by hash (so a changed plug-in is never used).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub name: String,
    pub hash: ContentHash,
}

/// The canonical manifest a bundle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: FunctionName,
    pub version: semver::Version,
    pub kind: BundleKind,
    /// Sorted; empty until plug-ins exist on the platform.
    pub plugins: Vec<PluginRef>,
    /// What the function may use besides its input and output (default: nothing).
    pub permissions: Permissions,
    pub limits: LimitsOverride,
}

impl Manifest {
    /// The canonical encoding: compact JSON with fields in declaration order and sets sorted.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut canonical = self.clone();
        canonical.plugins.sort();
        serde_json::to_vec(&canonical).expect("manifests always serialize")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid TOML for a cella bundle: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("[permissions] in the manifest: {0}")]
    Permissions(#[from] cella_core::PermissionError),
    #[error("limit `{setting}` in the manifest: {source}")]
    Limit {
        setting: String,
        source: cella_core::LimitError,
    },
}

/// The manifest as an author writes it (`cella.toml` beside the payload):
///
/// ```toml
/// name = "brotli"
/// version = "1.2.0"
/// kind = "wasi-command"          # or "wasi-http", "js"
/// payload = "brotli.wasm"        # relative to this file
/// [permissions]                  # all optional; nothing is granted by default
/// clocks = true
/// random = true
/// kv = true
/// env = ["GREETING"]
/// http = ["api.example.com"]
/// [limits]
/// timeout = "2s"
/// memory = "64MiB"
/// [[plugins]]
/// name = "quickjs"
/// hash = "sha256:…"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub name: FunctionName,
    pub version: semver::Version,
    pub kind: BundleKind,
    pub payload: String,
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    #[serde(default)]
    pub permissions: Permissions,
    /// `timeout`, `memory`, `output` as on the command line (`"2s"`, `"64MiB"`).
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, String>,
}

impl ManifestFile {
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        Ok(toml::from_str(text)?)
    }

    /// The canonical manifest.
    pub fn manifest(&self) -> Result<Manifest, ManifestError> {
        let mut limits = LimitsOverride::default();
        for (key, value) in &self.limits {
            let setting = format!("{key}={value}");
            limits
                .set(&setting)
                .map_err(|source| ManifestError::Limit { setting, source })?;
        }
        self.permissions.validate()?;
        let mut plugins = self.plugins.clone();
        plugins.sort();
        Ok(Manifest {
            name: self.name.clone(),
            version: self.version.clone(),
            kind: self.kind,
            plugins,
            permissions: self.permissions.clone(),
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authored_manifest_becomes_canonical() {
        let file = ManifestFile::parse(
            "name = \"brotli\"\nversion = \"1.2.0\"\nkind = \"wasi-command\"\n\
             payload = \"brotli.wasm\"\n[limits]\ntimeout = \"2s\"\nmemory = \"64MiB\"\n",
        )
        .unwrap();
        let manifest = file.manifest().unwrap();
        assert_eq!(manifest.limits.timeout_ms, Some(2000));
        assert_eq!(manifest.limits.memory_bytes, Some(64 << 20));
        let json = String::from_utf8(manifest.canonical_bytes()).unwrap();
        assert_eq!(
            json,
            "{\"name\":\"brotli\",\"version\":\"1.2.0\",\"kind\":\"wasi-command\",\"plugins\":[],\
             \"permissions\":{\"clocks\":false,\"random\":false,\"kv\":false,\"env\":[],\"http\":[]},\
             \"limits\":{\"timeout_ms\":2000,\"memory_bytes\":67108864,\
             \"output_bytes\":null}}"
        );
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let err = ManifestFile::parse("name = \"../x\"\nversion = \"1\"").unwrap_err();
        assert!(err.to_string().contains("not valid TOML"), "{err}");
        let err = ManifestFile::parse(
            "name = \"f\"\nversion = \"1.0.0\"\nkind = \"wasi-command\"\npayload = \"f.wasm\"\n\
             colour = \"blue\"",
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let file = ManifestFile::parse(
            "name = \"f\"\nversion = \"1.0.0\"\nkind = \"wasi-command\"\npayload = \"f.wasm\"\n\
             [limits]\ntimeout = \"soon\"",
        )
        .unwrap();
        assert!(file.manifest().unwrap_err().to_string().contains("timeout"));
    }
}
