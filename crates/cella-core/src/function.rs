//! A deployed function as the registry records it and the API shows it.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{ContentHash, FunctionKind, FunctionName, Limits, TenantName};

/// The current time as RFC 3339 (UTC, seconds), the format of every timestamp cella records.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
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

/// One deployed function: what runs (by hash), whose it is, how, and who may call it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub name: FunctionName,
    pub owner: TenantName,
    pub hash: ContentHash,
    pub kind: FunctionKind,
    pub size: u64,
    pub limits: Limits,
    pub created_at: String,
    pub updated_at: String,
    pub access: Access,
}

impl FunctionRecord {
    pub fn new(
        name: FunctionName,
        owner: TenantName,
        hash: ContentHash,
        kind: FunctionKind,
        size: u64,
        limits: Limits,
    ) -> Self {
        let at = now_rfc3339();
        FunctionRecord {
            name,
            owner,
            hash,
            kind,
            size,
            limits,
            created_at: at.clone(),
            updated_at: at,
            access: Access::default(),
        }
    }
}
