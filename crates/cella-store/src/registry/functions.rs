//! Functions in the registry, stored so that what an invocation reads does not grow with the
//! node or with a function's history:
//! - `FUNCTIONS`: a function's head — its current version, owner and access — the one row an
//!   invocation of the current version reads;
//! - `FUNCTION_VERSIONS`: one row per kept version, grouped by function, so a pinned invocation
//!   reads the one version it runs and a deploy reads only that function's history;
//! - `FUNCTIONS_BY_OWNER`: each tenant's function names, grouped by tenant, so listing a
//!   tenant's functions costs what it owns, not what the node holds;
//! - `CODE_USES`: the versions that run each piece of code, grouped by its hash, so whether
//!   code may be deleted is one lookup.
//!
//! Every write keeps the three together in one transaction.

use cella_core::{Access, ContentHash, FunctionName, FunctionRecord, FunctionVersion, TenantName};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Page, Registry, RegistryError, Sealed, db, now};

/// blinded function name → sealed JSON [`FunctionRecord`] holding the current version only
pub(super) const FUNCTIONS: Sealed = TableDefinition::new("sealed_functions");
/// blinded (function name, version) → sealed JSON [`StoredVersion`]
pub(super) const FUNCTION_VERSIONS: Sealed = TableDefinition::new("sealed_function_versions");
/// blinded (owner, function name) → sealed function name
pub(super) const FUNCTIONS_BY_OWNER: Sealed = TableDefinition::new("sealed_functions_by_owner");
/// blinded (code hash, `name@version`) → sealed `name@version`
pub(super) const CODE_USES: Sealed = TableDefinition::new("sealed_code_uses");

/// A kept version, with its place in the function's history.
#[derive(Serialize, Deserialize)]
struct StoredVersion {
    /// Deploys of this function before this one (orders the history).
    seq: u64,
    version: FunctionVersion,
}

impl Registry {
    /// Function `name` with its current version only (`versions` holds that one): what an
    /// invocation reads. In a cluster, one unknown here is looked for again after catching
    /// up (deployed on another gateway a moment ago).
    pub fn function(&self, name: &FunctionName) -> Result<Option<FunctionRecord>, RegistryError> {
        let lookup = || -> Result<Option<FunctionRecord>, RegistryError> {
            let tx = self.read()?;
            let functions = tx.open_table(FUNCTIONS).map_err(db)?;
            self.get(&functions, FUNCTIONS, name.as_str().as_bytes())
        };
        match lookup()? {
            None if self.catch_up()? > 0 => lookup(),
            found => Ok(found),
        }
    }

    /// Function `name` with every kept version in `versions`, oldest first.
    pub fn function_with_history(
        &self,
        name: &FunctionName,
    ) -> Result<Option<FunctionRecord>, RegistryError> {
        // Looked up first for its catch-up in a cluster; then head and history from one
        // snapshot, so a deploy or delete in between cannot mix them.
        if self.function(name)?.is_none() {
            return Ok(None);
        }
        let tx = self.read()?;
        let functions = tx.open_table(FUNCTIONS).map_err(db)?;
        let Some(mut head) =
            self.get::<FunctionRecord>(&functions, FUNCTIONS, name.as_str().as_bytes())?
        else {
            return Ok(None);
        };
        let versions = tx.open_table(FUNCTION_VERSIONS).map_err(db)?;
        head.versions = self.history(&versions, name)?;
        Ok(Some(head))
    }

    /// One kept version of function `name`, read alone.
    pub fn function_version(
        &self,
        name: &FunctionName,
        version: &semver::Version,
    ) -> Result<Option<FunctionVersion>, RegistryError> {
        let tx = self.read()?;
        let versions = tx.open_table(FUNCTION_VERSIONS).map_err(db)?;
        let key = version_key(self, name, version);
        let stored: Option<StoredVersion> = self.get_at(&versions, FUNCTION_VERSIONS, &key)?;
        Ok(stored.map(|s| s.version))
    }

    /// A page of function `name`'s kept versions, in no particular order.
    pub fn function_versions_page(
        &self,
        name: &FunctionName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<FunctionVersion>, RegistryError> {
        let tx = self.read()?;
        let versions = tx.open_table(FUNCTION_VERSIONS).map_err(db)?;
        let group = name.as_str().as_bytes();
        let page =
            self.group_page::<StoredVersion>(&versions, FUNCTION_VERSIONS, group, cursor, limit)?;
        Ok(page.map(|stored| stored.version))
    }

    /// Bytes of code `owner` keeps: every kept version of every function it owns.
    pub fn stored_bytes_of(&self, owner: &TenantName) -> Result<u64, RegistryError> {
        let tx = self.read()?;
        let by_owner = tx.open_table(FUNCTIONS_BY_OWNER).map_err(db)?;
        let versions = tx.open_table(FUNCTION_VERSIONS).map_err(db)?;
        let mut bytes = 0;
        for name in
            self.group_all::<String>(&by_owner, FUNCTIONS_BY_OWNER, owner.as_str().as_bytes())?
        {
            let name = FunctionName::new(&name).map_err(|_| tampered_index())?;
            bytes += self
                .history(&versions, &name)?
                .iter()
                .map(|v| v.size)
                .sum::<u64>();
        }
        Ok(bytes)
    }

    /// Every function `tenant` owns (current versions), by name.
    pub fn functions_owned_by(
        &self,
        tenant: &TenantName,
    ) -> Result<Vec<FunctionRecord>, RegistryError> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.functions_page(tenant, cursor.as_deref(), super::MAX_PAGE)?;
            all.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// A page of the functions `tenant` owns (current versions), by name within the page.
    pub fn functions_page(
        &self,
        tenant: &TenantName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<FunctionRecord>, RegistryError> {
        let tx = self.read()?;
        let by_owner = tx.open_table(FUNCTIONS_BY_OWNER).map_err(db)?;
        let functions = tx.open_table(FUNCTIONS).map_err(db)?;
        let names = self.group_page::<String>(
            &by_owner,
            FUNCTIONS_BY_OWNER,
            tenant.as_str().as_bytes(),
            cursor,
            limit,
        )?;
        let mut items = Vec::with_capacity(names.items.len());
        for name in &names.items {
            let head: FunctionRecord = self
                .get(&functions, FUNCTIONS, name.as_bytes())?
                .ok_or_else(tampered_index)?;
            if head.owner != *tenant {
                return Err(tampered_index());
            }
            items.push(head);
        }
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Page {
            items,
            next: names.next,
        })
    }

    /// Registers a function, or a new version of one: `record` is a new record (one version);
    /// an existing function gets that version as its current one and keeps its history,
    /// `created_at` and access list, at most `keep_versions` versions (the oldest are
    /// forgotten). `check` sees the existing record, with its history, first and may refuse.
    /// Returns the record with its history.
    pub fn put_function<E>(
        &self,
        record: FunctionRecord,
        keep_versions: usize,
        mut check: impl FnMut(Option<&FunctionRecord>) -> Result<(), E>,
    ) -> Result<Result<FunctionRecord, E>, RegistryError> {
        self.write_unless_refused(|tx| {
            let name = record.name.clone();
            let mut functions = tx.open_table(FUNCTIONS).map_err(db)?;
            let mut versions = tx.open_table(FUNCTION_VERSIONS).map_err(db)?;
            // The history, read once: the check sees it, and the new versions follow it.
            let stored = self.stored_history(&versions, &name)?;
            let seq_base = stored.last().map_or(0, |s| s.seq + 1);
            let existing = self
                .get::<FunctionRecord>(&functions, FUNCTIONS, name.as_str().as_bytes())?
                .map(|mut head| {
                    head.versions = stored.into_iter().map(|s| s.version).collect();
                    head
                });
            if let Err(refused) = check(existing.as_ref()) {
                return Ok(Err(refused));
            }
            let mut updated = match existing {
                Some(mut existing) => {
                    for version in &record.versions {
                        existing.advance(version.clone());
                    }
                    existing
                }
                None => {
                    let mut by_owner = tx.open_table(FUNCTIONS_BY_OWNER).map_err(db)?;
                    let key = self.grouped_key(
                        FUNCTIONS_BY_OWNER,
                        record.owner.as_str().as_bytes(),
                        name.as_str().as_bytes(),
                    );
                    self.put_at(&mut by_owner, FUNCTIONS_BY_OWNER, &key, &name.as_str())?;
                    record.clone()
                }
            };
            for version in updated.forget_oldest(keep_versions) {
                self.remove_row(
                    &mut versions,
                    FUNCTION_VERSIONS,
                    &version_key(self, &name, &version.version),
                )?;
                self.note_use(tx, &name, &version, false)?;
            }
            // The new versions' places follow the newest kept one (never forgotten).
            for (i, version) in record.versions.iter().enumerate() {
                let stored = StoredVersion {
                    seq: seq_base + i as u64,
                    version: version.clone(),
                };
                let key = version_key(self, &name, &version.version);
                self.put_at(&mut versions, FUNCTION_VERSIONS, &key, &stored)?;
                self.note_use(tx, &name, version, true)?;
            }
            self.put_head(&mut functions, &updated)?;
            Ok(Ok(updated))
        })
    }

    /// Changes a function's access list in one transaction; returns its record (current
    /// version only).
    pub fn update_access(
        &self,
        name: &FunctionName,
        mut change: impl FnMut(&mut Access),
    ) -> Result<FunctionRecord, RegistryError> {
        self.write(|tx| {
            let mut functions = tx.open_table(FUNCTIONS).map_err(db)?;
            let mut record: FunctionRecord = self
                .get(&functions, FUNCTIONS, name.as_str().as_bytes())?
                .ok_or_else(|| RegistryError::NoSuchFunction(name.clone()))?;
            change(&mut record.access);
            record.updated_at = now();
            self.put_head(&mut functions, &record)?;
            Ok(record)
        })
    }

    /// Removes a function with everything it kept; returns what was removed, with its history.
    pub fn delete_function(
        &self,
        name: &FunctionName,
    ) -> Result<Option<FunctionRecord>, RegistryError> {
        self.write(|tx| {
            self.delete_function_data(tx, name)?;
            self.delete_triggers_of(tx, name)?;
            let mut functions = tx.open_table(FUNCTIONS).map_err(db)?;
            let Some(mut head) =
                self.remove::<FunctionRecord>(&mut functions, FUNCTIONS, name.as_str().as_bytes())?
            else {
                return Ok(None);
            };
            let mut versions = tx.open_table(FUNCTION_VERSIONS).map_err(db)?;
            head.versions = self.history(&versions, name)?;
            for version in &head.versions {
                self.remove_row(
                    &mut versions,
                    FUNCTION_VERSIONS,
                    &version_key(self, name, &version.version),
                )?;
                self.note_use(tx, name, version, false)?;
            }
            self.forget_owner_entry(tx, &head)?;
            Ok(Some(head))
        })
    }

    /// Whether any kept version of any function runs the code `hash` (blobs are shared by
    /// content): one lookup in the code's group of uses.
    pub fn blob_in_use(&self, hash: &ContentHash) -> Result<bool, RegistryError> {
        let tx = self.read()?;
        let uses = tx.open_table(CODE_USES).map_err(db)?;
        let page =
            self.group_page::<String>(&uses, CODE_USES, hash.to_string().as_bytes(), None, 1)?;
        Ok(!page.items.is_empty())
    }

    /// Where the use of `version`'s code by `name` is recorded.
    fn use_key(&self, name: &FunctionName, version: &FunctionVersion) -> ([u8; 32], String) {
        let user = format!("{name}@{}", version.version);
        let key = self.grouped_key(
            CODE_USES,
            version.hash.to_string().as_bytes(),
            user.as_bytes(),
        );
        (key, user)
    }

    /// Records that `name` runs `version`'s code (`used`), or no longer does.
    fn note_use(
        &self,
        tx: &WriteTransaction,
        name: &FunctionName,
        version: &FunctionVersion,
        used: bool,
    ) -> Result<(), RegistryError> {
        let mut uses = tx.open_table(CODE_USES).map_err(db)?;
        let (key, user) = self.use_key(name, version);
        match used {
            true => self.put_at(&mut uses, CODE_USES, &key, &user),
            false => self.remove_row(&mut uses, CODE_USES, &key).map(drop),
        }
    }

    /// Stores a function's head: the record with its current version only.
    fn put_head(
        &self,
        functions: &mut redb::Table<&'static [u8], &'static [u8]>,
        record: &FunctionRecord,
    ) -> Result<(), RegistryError> {
        let mut head = record.clone();
        let current = head.versions.pop();
        head.versions = current.into_iter().collect();
        self.put(functions, FUNCTIONS, head.name.as_str().as_bytes(), &head)
    }

    fn forget_owner_entry(
        &self,
        tx: &WriteTransaction,
        head: &FunctionRecord,
    ) -> Result<(), RegistryError> {
        let mut by_owner = tx.open_table(FUNCTIONS_BY_OWNER).map_err(db)?;
        let key = self.grouped_key(
            FUNCTIONS_BY_OWNER,
            head.owner.as_str().as_bytes(),
            head.name.as_str().as_bytes(),
        );
        self.remove_row(&mut by_owner, FUNCTIONS_BY_OWNER, &key)?;
        Ok(())
    }

    /// Every kept version of `name`, oldest first.
    fn history(
        &self,
        versions: &impl ReadableTable<&'static [u8], &'static [u8]>,
        name: &FunctionName,
    ) -> Result<Vec<FunctionVersion>, RegistryError> {
        let stored = self.stored_history(versions, name)?;
        Ok(stored.into_iter().map(|s| s.version).collect())
    }

    /// Every kept version of `name` with its place in the history, oldest first.
    fn stored_history(
        &self,
        versions: &impl ReadableTable<&'static [u8], &'static [u8]>,
        name: &FunctionName,
    ) -> Result<Vec<StoredVersion>, RegistryError> {
        let mut stored: Vec<StoredVersion> =
            self.group_all(versions, FUNCTION_VERSIONS, name.as_str().as_bytes())?;
        stored.sort_by_key(|s| s.seq);
        Ok(stored)
    }
}

/// Where version `version` of `name` is stored.
fn version_key(registry: &Registry, name: &FunctionName, version: &semver::Version) -> [u8; 32] {
    registry.grouped_key(
        FUNCTION_VERSIONS,
        name.as_str().as_bytes(),
        version.to_string().as_bytes(),
    )
}

/// An index row that names no function of its tenant: rows were changed behind the registry's
/// back (each row's seal holds, so they were moved or put back).
fn tampered_index() -> RegistryError {
    RegistryError::Tampered {
        what: "the index of functions by owner".into(),
    }
}
