//! Tenants' public signing keys: a tenant registers the keys its bundles are signed with;
//! revoking one stops new deploys signed by it (what is already deployed keeps running until
//! its owner deploys a new version or deletes it).

use cella_core::TenantName;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::{Registry, RegistryError, Sealed, db, now};

/// blinded (tenant, key id), grouped by tenant → sealed JSON [`TenantKey`]
pub(super) const KEYS: Sealed = TableDefinition::new("sealed_keys");

/// A public key a tenant signs bundles with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantKey {
    pub tenant: TenantName,
    /// `ed25519:` and 16 hex digits of the key's SHA-256.
    pub id: String,
    /// `ed25519:` and the key's 64 hex digits.
    pub public_key: String,
    pub added_at: String,
    pub revoked_at: Option<String>,
}

impl TenantKey {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

impl Registry {
    /// Where `tenant`'s key `id` is stored: grouped by tenant, so a tenant's keys are read
    /// without reading every tenant's.
    fn key_place(&self, tenant: &TenantName, id: &str) -> [u8; 32] {
        self.grouped_key(KEYS, tenant.as_str().as_bytes(), id.as_bytes())
    }

    /// Registers `public_key` (named `id`) for `tenant`. A key revoked before cannot come back.
    pub fn add_key(
        &self,
        tenant: &TenantName,
        id: &str,
        public_key: &str,
    ) -> Result<TenantKey, RegistryError> {
        self.write(|tx| {
            let mut keys = tx.open_table(KEYS).map_err(db)?;
            let place = self.key_place(tenant, id);
            if let Some(existing) = self.get_at::<TenantKey>(&keys, KEYS, &place)? {
                return Err(RegistryError::KeyExists {
                    id: id.to_owned(),
                    revoked: !existing.is_active(),
                });
            }
            let key = TenantKey {
                tenant: tenant.clone(),
                id: id.to_owned(),
                public_key: public_key.to_owned(),
                added_at: now(),
                revoked_at: None,
            };
            self.put_at(&mut keys, KEYS, &place, &key)?;
            Ok(key)
        })
    }

    pub fn key(&self, tenant: &TenantName, id: &str) -> Result<Option<TenantKey>, RegistryError> {
        let tx = self.read()?;
        let keys = tx.open_table(KEYS).map_err(db)?;
        self.get_at(&keys, KEYS, &self.key_place(tenant, id))
    }

    /// Every key `tenant` has registered, revoked ones included, oldest first.
    pub fn keys(&self, tenant: &TenantName) -> Result<Vec<TenantKey>, RegistryError> {
        let tx = self.read()?;
        let keys = tx.open_table(KEYS).map_err(db)?;
        let mut all: Vec<TenantKey> = self.group_all(&keys, KEYS, tenant.as_str().as_bytes())?;
        if all.iter().any(|key| key.tenant != *tenant) {
            return Err(RegistryError::Tampered {
                what: "a tenant's keys (a key of another tenant among them)".into(),
            });
        }
        all.sort_by(|a, b| (&a.added_at, &a.id).cmp(&(&b.added_at, &b.id)));
        Ok(all)
    }

    /// Marks the key revoked; returns it.
    pub fn revoke_key(&self, tenant: &TenantName, id: &str) -> Result<TenantKey, RegistryError> {
        self.write(|tx| {
            let mut keys = tx.open_table(KEYS).map_err(db)?;
            let place = self.key_place(tenant, id);
            let mut key: TenantKey = self
                .get_at(&keys, KEYS, &place)?
                .ok_or_else(|| RegistryError::NoSuchKey(id.to_owned()))?;
            if key.revoked_at.is_none() {
                key.revoked_at = Some(now());
                self.put_at(&mut keys, KEYS, &place, &key)?;
            }
            Ok(key)
        })
    }
}
