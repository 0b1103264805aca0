//! A deployed function as the registry records it and the API shows it.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{ContentHash, FunctionKind, FunctionName, Limits, Permissions, PluginUse, TenantName};

/// The current time as RFC 3339 (UTC, seconds), the format of every timestamp cella records.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `time` as RFC 3339 (UTC, seconds).
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Who may invoke a function besides its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Any authenticated tenant may invoke it.
    pub public: bool,
    /// These tenants may invoke it.
    pub tenants: BTreeSet<TenantName>,
}

impl Access {
    pub fn allows(&self, tenant: &TenantName) -> bool {
        self.public || self.tenants.contains(tenant)
    }
}

/// One deployed version of a function: a signed bundle, by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionVersion {
    pub version: semver::Version,
    /// The bundle's hash (what `expect-hash` names).
    pub hash: ContentHash,
    pub kind: FunctionKind,
    /// Size of the payload (the WebAssembly), in bytes.
    pub size: u64,
    pub limits: Limits,
    /// Id of the tenant key that signed the bundle.
    pub signer: String,
    pub deployed_at: String,
    /// The plug-ins its image is made from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginUse>,
    /// What its manifest grants.
    #[serde(default)]
    pub permissions: Permissions,
}

/// One deployed function: what runs (its current version, by hash), whose it is, how, who may
/// call it, and every version deployed before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: FunctionName,
    pub owner: TenantName,
    pub version: semver::Version,
    pub hash: ContentHash,
    pub kind: FunctionKind,
    pub size: u64,
    pub limits: Limits,
    pub signer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginUse>,
    #[serde(default)]
    pub permissions: Permissions,
    pub created_at: String,
    pub updated_at: String,
    pub access: Access,
    /// Versions, oldest first; the last is the current one. Every kept version where the
    /// history was read (`GET /v1/functions/NAME`, a deploy's answer); only the current one
    /// where it was not (the registry's head of the function, what an invocation reads).
    pub versions: Vec<FunctionVersion>,
}

impl FunctionRecord {
    pub fn new(name: FunctionName, owner: TenantName, first: FunctionVersion) -> Self {
        let at = first.deployed_at.clone();
        FunctionRecord {
            name,
            owner,
            version: first.version.clone(),
            hash: first.hash,
            kind: first.kind,
            size: first.size,
            limits: first.limits,
            signer: first.signer.clone(),
            plugins: first.plugins.clone(),
            permissions: first.permissions.clone(),
            created_at: at.clone(),
            updated_at: at,
            access: Access::default(),
            versions: vec![first],
        }
    }

    /// The record as it reads with `version` current (for invoking a pinned version).
    pub fn at(&self, version: &semver::Version) -> Option<FunctionRecord> {
        let pinned = self.versions.iter().find(|v| v.version == *version)?;
        Some(self.showing(pinned))
    }

    /// The record as it reads with `pinned` (one of its versions) current; `versions` stays
    /// as it is.
    pub fn showing(&self, pinned: &FunctionVersion) -> FunctionRecord {
        let mut record = self.clone();
        record.show(pinned);
        record
    }

    /// Makes `next` the current version, keeping the history.
    pub fn advance(&mut self, next: FunctionVersion) {
        self.show(&next);
        self.updated_at = next.deployed_at.clone();
        self.versions.push(next);
    }

    /// Forgets the oldest versions so that at most `keep` remain (the current one always
    /// does); returns what was forgotten.
    pub fn forget_oldest(&mut self, keep: usize) -> Vec<FunctionVersion> {
        let excess = self.versions.len().saturating_sub(keep.max(1));
        self.versions.drain(..excess).collect()
    }

    /// Bytes of code its kept versions hold.
    pub fn stored_bytes(&self) -> u64 {
        self.versions.iter().map(|v| v.size).sum()
    }

    /// Sets the current-version fields from `version`.
    fn show(&mut self, version: &FunctionVersion) {
        self.version = version.version.clone();
        self.hash = version.hash;
        self.kind = version.kind;
        self.size = version.size;
        self.limits = version.limits;
        self.signer = version.signer.clone();
        self.plugins = version.plugins.clone();
        self.permissions = version.permissions.clone();
    }
}
