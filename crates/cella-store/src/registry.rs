//! The metadata registry in an embedded redb database: tenants, token hashes, functions and
//! who may invoke them. Every write is one ACID transaction, so a crash never leaves a function
//! half-registered. Calls block (redb syncs to disk on commit): call them from a blocking
//! thread when on an async runtime.

use std::path::Path;

use cella_core::{Access, ContentHash, FunctionName, FunctionRecord, TenantName};
#[cfg(test)]
use cella_core::{FunctionKind, Limits};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::token::{Principal, Token, hash_secret};

/// tenant name → JSON [`Tenant`]
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
/// SHA-256 of a token → encoded [`Principal`]
const TOKENS: TableDefinition<&[u8], &str> = TableDefinition::new("tokens");
/// function name → JSON [`FunctionRecord`]
const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
/// settings of the platform itself
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ADMIN_TOKEN_HASH: &str = "admin_token_sha256";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "the registry database at {path} could not be opened: {source}; if another `cella up` \
         is running on this data directory, stop it or use another --data-dir"
    )]
    Open { path: String, source: redb::Error },
    #[error("registry database error: {0}")]
    Database(#[from] redb::Error),
    #[error("registry entry `{key}` is unreadable ({source}); the database may be corrupt")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("tenant `{0}` already exists; pick another name")]
    TenantExists(TenantName),
    #[error("tenant `{0}` does not exist; create it with `cella tenant create {0}`")]
    NoSuchTenant(TenantName),
    #[error("function `{0}` does not exist")]
    NoSuchFunction(FunctionName),
}

fn db(e: impl Into<redb::Error>) -> RegistryError {
    RegistryError::Database(e.into())
}

fn now() -> String {
    cella_core::now_rfc3339()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: TenantName,
    pub created_at: String,
    /// Hex SHA-256 of the tenant's current token (so rotation can retire it).
    token_sha256: String,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|source| RegistryError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("registry records always serialize")
}

pub struct Registry {
    db: Database,
}

impl Registry {
    /// Opens (or creates) the registry at `path`.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let open_err = |source: redb::Error| RegistryError::Open {
            path: path.display().to_string(),
            source,
        };
        let db = Database::create(path).map_err(|e| open_err(e.into()))?;
        // Create every table up front so readers never see a missing table.
        let tx = db.begin_write().map_err(|e| open_err(e.into()))?;
        {
            tx.open_table(TENANTS).map_err(|e| open_err(e.into()))?;
            tx.open_table(TOKENS).map_err(|e| open_err(e.into()))?;
            tx.open_table(FUNCTIONS).map_err(|e| open_err(e.into()))?;
            tx.open_table(META).map_err(|e| open_err(e.into()))?;
        }
        tx.commit().map_err(|e| open_err(e.into()))?;
        Ok(Registry { db })
    }

    /// Creates the admin token on first start. Returns it (to be shown once) only when it was
    /// created now; afterwards only its hash exists.
    pub fn ensure_admin_token(&self) -> Result<Option<Token>, RegistryError> {
        let tx = self.db.begin_write().map_err(db)?;
        let created = {
            let mut meta = tx.open_table(META).map_err(db)?;
            if meta.get(ADMIN_TOKEN_HASH).map_err(db)?.is_some() {
                None
            } else {
                let token = Token::generate();
                meta.insert(ADMIN_TOKEN_HASH, &token.hash()[..])
                    .map_err(db)?;
                let mut tokens = tx.open_table(TOKENS).map_err(db)?;
                tokens
                    .insert(&token.hash()[..], Principal::Admin.encode().as_str())
                    .map_err(db)?;
                Some(token)
            }
        };
        tx.commit().map_err(db)?;
        Ok(created)
    }

    /// Who holds `secret`, if anyone.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Principal>, RegistryError> {
        let tx = self.db.begin_read().map_err(db)?;
        let tokens = tx.open_table(TOKENS).map_err(db)?;
        let found = tokens.get(&hash_secret(secret)[..]).map_err(db)?;
        Ok(found.and_then(|p| Principal::decode(p.value())))
    }

    pub fn create_tenant(&self, name: &TenantName) -> Result<(Tenant, Token), RegistryError> {
        let token = Token::generate();
        let tenant = Tenant {
            name: name.clone(),
            created_at: now(),
            token_sha256: hex::encode(token.hash()),
        };
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut tenants = tx.open_table(TENANTS).map_err(db)?;
            if tenants.get(name.as_str()).map_err(db)?.is_some() {
                return Err(RegistryError::TenantExists(name.clone()));
            }
            tenants
                .insert(name.as_str(), encode(&tenant).as_slice())
                .map_err(db)?;
            let mut tokens = tx.open_table(TOKENS).map_err(db)?;
            let principal = Principal::Tenant(name.clone()).encode();
            tokens
                .insert(&token.hash()[..], principal.as_str())
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok((tenant, token))
    }

    /// Issues a new token for `name` and retires the old one.
    pub fn rotate_tenant_token(&self, name: &TenantName) -> Result<Token, RegistryError> {
        let token = Token::generate();
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut tenants = tx.open_table(TENANTS).map_err(db)?;
            let mut tenant: Tenant = match tenants.get(name.as_str()).map_err(db)? {
                Some(bytes) => decode(name.as_str(), bytes.value())?,
                None => return Err(RegistryError::NoSuchTenant(name.clone())),
            };
            let mut tokens = tx.open_table(TOKENS).map_err(db)?;
            if let Ok(old) = hex::decode(&tenant.token_sha256) {
                tokens.remove(old.as_slice()).map_err(db)?;
            }
            tenant.token_sha256 = hex::encode(token.hash());
            tenants
                .insert(name.as_str(), encode(&tenant).as_slice())
                .map_err(db)?;
            let principal = Principal::Tenant(name.clone()).encode();
            tokens
                .insert(&token.hash()[..], principal.as_str())
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(token)
    }

    pub fn tenant(&self, name: &TenantName) -> Result<Option<Tenant>, RegistryError> {
        let tx = self.db.begin_read().map_err(db)?;
        let tenants = tx.open_table(TENANTS).map_err(db)?;
        let found = tenants.get(name.as_str()).map_err(db)?;
        found.map(|b| decode(name.as_str(), b.value())).transpose()
    }

    pub fn tenants(&self) -> Result<Vec<Tenant>, RegistryError> {
        let tx = self.db.begin_read().map_err(db)?;
        let tenants = tx.open_table(TENANTS).map_err(db)?;
        let mut out = Vec::new();
        for entry in tenants.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    pub fn function(&self, name: &FunctionName) -> Result<Option<FunctionRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db)?;
        let functions = tx.open_table(FUNCTIONS).map_err(db)?;
        let found = functions.get(name.as_str()).map_err(db)?;
        found.map(|b| decode(name.as_str(), b.value())).transpose()
    }

    /// Every function `tenant` owns, by name.
    pub fn functions_owned_by(
        &self,
        tenant: &TenantName,
    ) -> Result<Vec<FunctionRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db)?;
        let functions = tx.open_table(FUNCTIONS).map_err(db)?;
        let mut out = Vec::new();
        for entry in functions.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            let record: FunctionRecord = decode(key.value(), value.value())?;
            if record.owner == *tenant {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Inserts or replaces a function, keeping `created_at` and the access list of an earlier
    /// version. `check` sees the existing record first and may refuse the write.
    pub fn put_function<E>(
        &self,
        mut record: FunctionRecord,
        check: impl FnOnce(Option<&FunctionRecord>) -> Result<(), E>,
    ) -> Result<Result<FunctionRecord, E>, RegistryError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut functions = tx.open_table(FUNCTIONS).map_err(db)?;
            let existing: Option<FunctionRecord> = functions
                .get(record.name.as_str())
                .map_err(db)?
                .map(|b| decode(record.name.as_str(), b.value()))
                .transpose()?;
            if let Err(refused) = check(existing.as_ref()) {
                return Ok(Err(refused));
            }
            if let Some(existing) = existing {
                record.created_at = existing.created_at;
                record.access = existing.access;
            }
            functions
                .insert(record.name.as_str(), encode(&record).as_slice())
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(Ok(record))
    }

    /// Changes a function's access list in one transaction.
    pub fn update_access(
        &self,
        name: &FunctionName,
        change: impl FnOnce(&mut Access),
    ) -> Result<FunctionRecord, RegistryError> {
        let tx = self.db.begin_write().map_err(db)?;
        let record = {
            let mut functions = tx.open_table(FUNCTIONS).map_err(db)?;
            let mut record: FunctionRecord = match functions.get(name.as_str()).map_err(db)? {
                Some(bytes) => decode(name.as_str(), bytes.value())?,
                None => return Err(RegistryError::NoSuchFunction(name.clone())),
            };
            change(&mut record.access);
            record.updated_at = now();
            functions
                .insert(name.as_str(), encode(&record).as_slice())
                .map_err(db)?;
            record
        };
        tx.commit().map_err(db)?;
        Ok(record)
    }

    /// Removes a function; returns what was removed.
    pub fn delete_function(
        &self,
        name: &FunctionName,
    ) -> Result<Option<FunctionRecord>, RegistryError> {
        let tx = self.db.begin_write().map_err(db)?;
        let removed = {
            let mut functions = tx.open_table(FUNCTIONS).map_err(db)?;
            let removed = functions.remove(name.as_str()).map_err(db)?;
            removed
                .map(|b| decode::<FunctionRecord>(name.as_str(), b.value()))
                .transpose()?
        };
        tx.commit().map_err(db)?;
        Ok(removed)
    }

    /// Whether any function still refers to the blob `hash` (blobs are shared by content).
    pub fn blob_in_use(&self, hash: &ContentHash) -> Result<bool, RegistryError> {
        let tx = self.db.begin_read().map_err(db)?;
        let functions = tx.open_table(FUNCTIONS).map_err(db)?;
        for entry in functions.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            let record: FunctionRecord = decode(key.value(), value.value())?;
            if record.hash == *hash {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantName {
        TenantName::new(name).unwrap()
    }

    #[test]
    fn tokens_authenticate_rotate_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let (admin, acme_token) = {
            let registry = Registry::open(&path).unwrap();
            let admin = registry.ensure_admin_token().unwrap().expect("first start");
            assert!(
                registry.ensure_admin_token().unwrap().is_none(),
                "shown once"
            );
            let (_, token) = registry.create_tenant(&tenant("acme")).unwrap();
            assert!(matches!(
                registry.create_tenant(&tenant("acme")),
                Err(RegistryError::TenantExists(_))
            ));
            (admin, token)
        };
        let registry = Registry::open(&path).unwrap();
        assert_eq!(
            registry.authenticate(admin.secret()).unwrap(),
            Some(Principal::Admin)
        );
        assert_eq!(
            registry.authenticate(acme_token.secret()).unwrap(),
            Some(Principal::Tenant(tenant("acme")))
        );
        assert_eq!(registry.authenticate("cella_guess").unwrap(), None);

        let fresh = registry.rotate_tenant_token(&tenant("acme")).unwrap();
        assert_eq!(registry.authenticate(acme_token.secret()).unwrap(), None);
        assert!(registry.authenticate(fresh.secret()).unwrap().is_some());
    }

    #[test]
    fn redeploy_keeps_access_and_check_can_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("r.redb")).unwrap();
        let name = FunctionName::new("f").unwrap();
        let record = |bytes: &[u8]| {
            FunctionRecord::new(
                name.clone(),
                tenant("acme"),
                ContentHash::of(bytes),
                FunctionKind::WasiCommand,
                bytes.len() as u64,
                Limits::default(),
            )
        };
        registry
            .put_function(record(b"v1"), |_| Ok::<_, ()>(()))
            .unwrap()
            .unwrap();
        registry
            .update_access(&name, |a| {
                a.tenants.insert(tenant("beta"));
            })
            .unwrap();
        let v2 = registry
            .put_function(record(b"v2"), |_| Ok::<_, ()>(()))
            .unwrap()
            .unwrap();
        assert!(v2.access.allows(&tenant("beta")));
        assert_eq!(v2.hash, ContentHash::of(b"v2"));
        let refused = registry.put_function(record(b"v3"), |_| Err("no")).unwrap();
        assert_eq!(refused, Err("no"));
        assert_eq!(registry.function(&name).unwrap().unwrap().hash, v2.hash);
        assert!(registry.blob_in_use(&v2.hash).unwrap());
        assert!(registry.delete_function(&name).unwrap().is_some());
        assert!(registry.function(&name).unwrap().is_none());
    }
}
