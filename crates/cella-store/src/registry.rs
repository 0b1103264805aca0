//! The metadata registry in an embedded redb database: tenants, token hashes, functions and
//! who may invoke them. Every write is one ACID transaction, so a crash never leaves a function
//! half-registered. The file lives outside the trust boundary, so every record in it is sealed
//! ([`crate::sealed`]) and the whole has a version that only moves forward ([`crate::version`]).
//! Calls block (redb syncs to disk on commit): call them from a blocking thread when on an
//! async runtime.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cella_core::{FunctionName, PluginName, TenantName};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sealed::{self, RecordSealer, SealingKey};
use crate::token::{Principal, Token, hash_secret};
use crate::version::{self, VersionFile};

type Sealed = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// blinded tenant name → sealed JSON [`Tenant`]
const TENANTS: Sealed = TableDefinition::new("sealed_tenants");
/// blinded SHA-256 of a token → sealed encoded [`Principal`]
const TOKENS: Sealed = TableDefinition::new("sealed_tokens");
/// Every table of sealed records (the digest covers them all).
const SEALED_TABLES: [Sealed; 11] = [
    TENANTS,
    TOKENS,
    FUNCTIONS,
    functions::FUNCTION_VERSIONS,
    functions::FUNCTIONS_BY_OWNER,
    functions::CODE_USES,
    keys::KEYS,
    plugins::PLUGINS,
    function_data::FUNCTION_DATA,
    invocations::INVOCATIONS,
    triggers::TRIGGERS,
];
/// settings of the registry itself; values sealed except the wrapped data key
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sealed_meta");
const DATA_KEY: &str = "data_key";
const VERSION: &str = "version";
const ADMIN_TOKEN: &str = "admin_token_sha256";
/// The settings in `META` that are part of the registry's state (covered by its digest and
/// shared with a cluster's other gateways); the data key and the version are each node's own.
const SHARED_META: [&str; 2] = [ADMIN_TOKEN, cluster::CLUSTER_EPOCH];
/// Tables of registries written before sealing existed.
const UNSEALED_TABLES: [&str; 4] = ["tenants", "tokens", "functions", "meta"];
const DATA_KEY_CONTEXT: &[u8] = b"cella registry data key v1";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "the registry database at {path} could not be opened: {source}; {}",
        open_hint(source)
    )]
    Open { path: String, source: redb::Error },
    #[error("registry database error: {0}")]
    Database(#[from] redb::Error),
    #[error(
        "the registry at {path} was written by an earlier cella that did not seal it; move that \
         data directory away (or start with another --data-dir) and create the tenants again"
    )]
    Unsealed { path: String },
    #[error(
        "the registry at {path} is sealed for another build of cella ({sealed_for}); this build \
         ({this}) cannot open it. Start the build that sealed it, or start this build with \
         another --data-dir"
    )]
    SealedForAnotherBuild {
        path: String,
        sealed_for: String,
        this: String,
    },
    #[error(
        "a sealed record in the registry ({what}) failed authentication: it was changed, \
         truncated or moved on disk, and it is not used; restore the data directory from a backup"
    )]
    Tampered { what: String },
    #[error(
        "the registry holds version {found}, but this node has already sealed version \
         {expected}: an older copy of the registry was put back. Refusing to use it; restore the \
         newest copy of the data directory"
    )]
    RolledBack { found: u64, expected: u64 },
    #[error(
        "the registry's version file {path} cannot be read or written: {source}{}",
        storage_hint(source)
    )]
    VersionFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the registry's storage failed ({source}){}; the registry is opened again at the next \
         request",
        storage_hint(source)
    )]
    Storage { source: std::io::Error },
    #[error("registry entry in {what} is unreadable ({source}); the database may be corrupt")]
    Corrupt {
        what: String,
        source: serde_json::Error,
    },
    #[error("tenant `{0}` already exists; pick another name")]
    TenantExists(TenantName),
    #[error("tenant `{0}` does not exist; create it with `cella tenant create {0}`")]
    NoSuchTenant(TenantName),
    #[error("function `{0}` does not exist")]
    NoSuchFunction(FunctionName),
    #[error(
        "key {id} is already registered{}",
        if *revoked { " and was revoked; revoked keys cannot come back: make a new one with `cella keygen`" } else { "" }
    )]
    KeyExists { id: String, revoked: bool },
    #[error("no key {0} is registered for this tenant; see `cella keys list`")]
    NoSuchKey(String),
    #[error(
        "plug-in `{name}` is already registered as another module ({hash}); a name always \
         means the same code, so register the new module under a new name (e.g. `{name}-2`)"
    )]
    PluginExists { name: PluginName, hash: String },
    #[error(
        "the registry was written by an earlier cella, in a format this build does not read \
         (format 1: another state digest, functions stored whole); start this build with \
         another --data-dir (or, in a cluster, a new cluster), or keep the earlier build on it"
    )]
    OlderFormat,
    #[error(
        "the cursor was not issued by this registry for this list (or the registry changed \
         keys); list again from the start, without a cursor"
    )]
    BadCursor,
    #[error(transparent)]
    Shared(#[from] SharedError),
}

/// How often a node checks every row of its registry against the sealed digest
/// ([`Registry::verify_state`]).
pub const VERIFY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Memory the registry's database keeps for pages it read or wrote. redb's default (1 GiB)
/// would let the registry's share of the node's memory grow with the registry up to that;
/// pages beyond this are read again from the file (through the kernel's page cache).
pub const REGISTRY_CACHE_BYTES: usize = 64 << 20;

/// The most items one page of a list holds.
pub const MAX_PAGE: usize = 1000;

/// One page of a list, and the cursor that asks for the next (`None`: this was the last).
/// Cursors are opaque: sealed by the registry, so they say nothing about where rows are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

fn db(e: impl Into<redb::Error>) -> RegistryError {
    match e.into() {
        redb::Error::Io(source) => RegistryError::Storage { source },
        other => RegistryError::Database(other),
    }
}

/// What to do when the database cannot be opened.
fn open_hint(e: &redb::Error) -> String {
    match e {
        redb::Error::Io(io) if !storage_hint(io).is_empty() => {
            format!("fix that{} and start again", storage_hint(io))
        }
        redb::Error::DatabaseAlreadyOpen => "another `cella up` is running on this data \
            directory: stop it or use another --data-dir"
            .into(),
        _ => "if another `cella up` is running on this data directory, stop it or use another \
              --data-dir"
            .into(),
    }
}

/// What to do about an I/O error the operator can fix.
fn storage_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) => " (the data directory's file system is full: free space on it)",
        Some(122) => " (the data directory's disk quota is used up: raise it or free space)",
        _ if e.kind() == std::io::ErrorKind::PermissionDenied => {
            " (check the data directory's permissions)"
        }
        _ => "",
    }
}

impl RegistryError {
    /// Whether the database must be opened again before it can be used: after an I/O error
    /// redb refuses every later operation (`PreviousIo`) until it is.
    fn needs_reopen(&self) -> bool {
        matches!(
            self,
            RegistryError::Storage { .. } | RegistryError::Database(redb::Error::PreviousIo)
        )
    }
}

fn tampered(what: impl Into<String>) -> impl FnOnce(sealed::Unauthentic) -> RegistryError {
    let what = what.into();
    move |_| RegistryError::Tampered { what }
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

/// The data key as stored: wrapped by the TEE's sealing key, with what that key is bound to.
#[derive(Serialize, Deserialize)]
struct WrappedDataKey {
    bound_to: String,
    wrapped: String,
}

/// How the registry's database file is opened (a test opens it on a failing disk).
type OpenDatabase = dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync;

/// The database, opened again after a storage failure: after an I/O error (a full disk)
/// redb refuses every later operation until the database is closed and opened again.
struct DatabaseHandle {
    open: Box<OpenDatabase>,
    current: Mutex<Option<Arc<Database>>>,
    /// The last storage failure, until a write succeeds again (reported by health checks).
    failure: Mutex<Option<String>>,
}

impl DatabaseHandle {
    /// The open database, opened again if a storage failure closed it.
    fn get(&self) -> Result<Arc<Database>, RegistryError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(database) = &*current {
            return Ok(database.clone());
        }
        // Transactions begun before the failure hold the old file open for a moment more.
        let mut waited = 0;
        loop {
            match (self.open)() {
                Ok(database) => {
                    tracing::info!(
                        "the registry database was opened again after a storage failure"
                    );
                    let database = Arc::new(database);
                    *current = Some(database.clone());
                    return Ok(database);
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if waited < 100 => {
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(db(e)),
            }
        }
    }

    /// Notes `e`: a storage failure closes the database, to be opened again on next use.
    fn note<T>(&self, result: Result<T, RegistryError>) -> Result<T, RegistryError> {
        if let Err(e) = &result
            && e.needs_reopen()
        {
            tracing::error!("registry storage failed: {e}");
            // What a health check may say to anyone: the kind of failure, not paths.
            let summary = match e {
                RegistryError::Storage { source } => format!(
                    "the registry's storage failed{}; the node's log has the details",
                    storage_hint(source)
                ),
                _ => "the registry's storage failed; the node's log has the details".to_owned(),
            };
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(summary);
            *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        result
    }

    fn recovered(&self) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

pub struct Registry {
    db: DatabaseHandle,
    /// The data key, handed (sealed) only to a gateway admitted to share this registry.
    data_key: RegistryKey,
    sealer: RecordSealer,
    blob_key: crate::BlobKey,
    /// What the cluster's keys are derived from (see `cluster.rs`).
    cluster_root: [u8; 32],
    version_file: VersionFile,
    /// The highest version this node has seen or written; the database must never fall behind.
    version: AtomicU64,
    /// The state hash of the last version this node sealed or checked: a write starts from it
    /// instead of hashing every row again.
    state: Mutex<StateHash>,
    /// What the write transaction under way has changed (redb runs one at a time).
    pending: Mutex<Pending>,
    /// Set when a check of every row found the state changed behind the registry's back: from
    /// then on nothing is read or written (see [`Registry::verify_state`]).
    tampered: std::sync::atomic::AtomicBool,
    /// The log this registry shares with a cluster's other gateways, once it joined one.
    log: OnceLock<Arc<dyn SharedLog>>,
    /// The version reached by applying other gateways' changes (see `shared.rs`).
    applied: tokio::sync::watch::Sender<u64>,
}

impl Registry {
    /// Opens (or creates) the registry at `path`, sealed with a data key that `sealing` wraps.
    /// Refuses a registry sealed for another build, a tampered one and an older copy.
    pub fn open(path: &Path, sealing: &SealingKey) -> Result<Self, RegistryError> {
        Self::open_with_key(path, sealing, None)
    }

    /// Like [`Registry::open`], but a new registry takes `given` as its data key instead of a
    /// random one: a gateway admitted to a cluster adopts the cluster's registry this way. An
    /// existing registry must already have that key.
    pub fn open_with_key(
        path: &Path,
        sealing: &SealingKey,
        given: Option<&RegistryKey>,
    ) -> Result<Self, RegistryError> {
        let file = path.to_owned();
        Self::open_on(
            path,
            sealing,
            given,
            Box::new(move || {
                redb::Builder::new()
                    .set_cache_size(REGISTRY_CACHE_BYTES)
                    .create(&file)
            }),
        )
    }

    /// Like [`Registry::open_with_key`], with the database opened (and opened again after a
    /// storage failure) by `open`.
    fn open_on(
        path: &Path,
        sealing: &SealingKey,
        given: Option<&RegistryKey>,
        open: Box<OpenDatabase>,
    ) -> Result<Self, RegistryError> {
        let open_err = |source: redb::Error| RegistryError::Open {
            path: path.display().to_string(),
            source,
        };
        let database = open().map_err(|e| open_err(e.into()))?;
        let tx = database.begin_write().map_err(|e| open_err(e.into()))?;
        let unsealed = tx
            .list_tables()
            .map_err(|e| open_err(e.into()))?
            .any(|table| UNSEALED_TABLES.contains(&table.name()));
        if unsealed {
            return Err(RegistryError::Unsealed {
                path: path.display().to_string(),
            });
        }
        let data_key = {
            let mut meta = tx.open_table(META).map_err(|e| open_err(e.into()))?;
            let stored = meta.get(DATA_KEY).map_err(db)?.map(|v| v.value().to_vec());
            match stored {
                Some(stored) => {
                    let data_key = unwrap_data_key(path, &stored, sealing)?;
                    match given {
                        Some(given) if given.0 != data_key => {
                            if meta.get(VERSION).map_err(db)?.is_some() {
                                return Err(SharedError::OtherCluster.into());
                            }
                            // Nothing was ever sealed under the key made at the first start:
                            // take the cluster's instead, and forget the version file that
                            // key sealed.
                            let wrapped = wrap_data_key(&given.0, sealing);
                            meta.insert(DATA_KEY, encode(&wrapped).as_slice())
                                .map_err(db)?;
                            VersionFile::beside(path, [0; 32])
                                .remove()
                                .map_err(|source| RegistryError::VersionFile {
                                    path: path.display().to_string(),
                                    source,
                                })?;
                            given.0
                        }
                        _ => data_key,
                    }
                }
                None => {
                    let data_key = given.map_or_else(new_data_key, |given| given.0);
                    let wrapped = wrap_data_key(&data_key, sealing);
                    meta.insert(DATA_KEY, encode(&wrapped).as_slice())
                        .map_err(db)?;
                    data_key
                }
            }
        };
        // Create every table up front so readers never see a missing table.
        for table in SEALED_TABLES {
            tx.open_table(table).map_err(|e| open_err(e.into()))?;
        }
        tx.commit().map_err(|e| open_err(e.into()))?;

        let sealer = RecordSealer::new(&data_key);
        let version_file = VersionFile::beside(path, sealer.blind("version file", b"key"));
        let registry = Registry {
            db: DatabaseHandle {
                open,
                current: Mutex::new(Some(Arc::new(database))),
                failure: Mutex::default(),
            },
            data_key: RegistryKey(data_key),
            sealer,
            blob_key: crate::BlobKey::derive(&data_key),
            cluster_root: cluster::cluster_root(&data_key),
            version_file,
            version: AtomicU64::new(0),
            state: Mutex::new(StateHash::empty()),
            pending: Mutex::new(Pending::on(StateHash::empty())),
            tampered: std::sync::atomic::AtomicBool::new(false),
            log: OnceLock::new(),
            applied: tokio::sync::watch::Sender::new(0),
        };
        registry.check_version_file()?;
        Ok(registry)
    }

    /// The key that seals this platform's blobs: it comes with the registry, so both pass to a
    /// later build together.
    pub fn blob_key(&self) -> crate::BlobKey {
        self.blob_key.clone()
    }

    /// The registry's version: it grows by one with every change and never goes back.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Compares the database's version with the sealed copy in the version file.
    fn check_version_file(&self) -> Result<(), RegistryError> {
        let tx = self.db.get()?.begin_read().map_err(db)?;
        self.check_state_digest(&tx)?;
        let in_database = self.stored_version(&tx)?;
        let file_error = |source| RegistryError::VersionFile {
            path: self.version_file.path().display().to_string(),
            source,
        };
        let in_file = match self.version_file.read().map_err(file_error)? {
            Some(version) => version.map_err(tampered("the version file"))?,
            None => {
                if in_database > 0 {
                    tracing::warn!(
                        "the registry's version file {} is missing; writing it again \
                         (an older copy of the registry restored now would go unnoticed)",
                        self.version_file.path().display()
                    );
                }
                0
            }
        };
        if in_database < in_file {
            return Err(RegistryError::RolledBack {
                found: in_database,
                expected: in_file,
            });
        }
        // A crash between a commit and the file write leaves the file behind: catch it up.
        self.version_file.record(in_database).map_err(file_error)?;
        self.version.store(in_database, Ordering::SeqCst);
        Ok(())
    }

    fn stored_version(&self, tx: &ReadTransaction) -> Result<u64, RegistryError> {
        Ok(self.stored_state(tx)?.map_or(0, |(version, _)| version))
    }

    /// The sealed version record: the version and the digest of every record it covers.
    fn stored_state(&self, tx: &ReadTransaction) -> Result<Option<(u64, [u8; 32])>, RegistryError> {
        let meta = tx.open_table(META).map_err(db)?;
        let stored = meta.get(VERSION).map_err(db)?;
        stored
            .map(|sealed| self.open_version(sealed.value()))
            .transpose()
    }

    /// Every record must be the one the last write left: a record put back from an older
    /// copy, deleted or added behind the registry's back changes the digest. Hashes every row
    /// (once, at start); later writes update the hash by the rows they change.
    fn check_state_digest(&self, tx: &ReadTransaction) -> Result<(), RegistryError> {
        let hash = state_hash(
            &tx.open_table(META).map_err(db)?,
            SEALED_TABLES.map(|t| (t, tx.open_table(t))),
        )?;
        let sealed = self.stored_state(tx)?.map(|(_, digest)| digest);
        if let Some(sealed) = sealed
            && sealed != hash.digest()
        {
            let mut rows = Vec::new();
            visit_rows(
                &tx.open_table(META).map_err(db)?,
                SEALED_TABLES.map(|t| (t, tx.open_table(t))),
                |table, key, value| rows.push((table.to_owned(), key.to_vec(), value.to_vec())),
            )?;
            if format_1_digest(rows.iter().map(|(t, k, v)| (t.as_str(), &k[..], &v[..]))) == sealed
            {
                return Err(RegistryError::OlderFormat);
            }
        }
        require_digest(sealed, hash.digest())?;
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = hash;
        Ok(())
    }

    /// A read transaction on a database that has not fallen behind what this node has seen.
    fn read(&self) -> Result<ReadTransaction, RegistryError> {
        self.refuse_if_tampered()?;
        // Read what this node has seen first: a write committing in between only raises what
        // the transaction finds.
        let expected = self.version();
        let tx = self
            .db
            .note(self.db.get().and_then(|d| d.begin_read().map_err(db)))?;
        let found = self.db.note(self.stored_version(&tx))?;
        if found < expected {
            return Err(RegistryError::RolledBack { found, expected });
        }
        Ok(tx)
    }

    /// Hashes every row and compares the result with the sealed digest: a write checks only
    /// the rows it changes, so a row swapped on disk while the node runs would otherwise be
    /// noticed only at the next start. The node runs this every [`VERIFY_INTERVAL`]; once it
    /// fails, the registry refuses every read and write until it is restored and the node
    /// started again. Costs a read of every row (about half a second of one core for 100,000
    /// tenants).
    pub fn verify_state(&self) -> Result<(), RegistryError> {
        self.refuse_if_tampered()?;
        let tx = self
            .db
            .note(self.db.get().and_then(|d| d.begin_read().map_err(db)))?;
        let hash = state_hash(
            &tx.open_table(META).map_err(db)?,
            SEALED_TABLES.map(|t| (t, tx.open_table(t))),
        )?;
        let sealed = self.stored_state(&tx)?.map(|(_, digest)| digest);
        if let Err(e) = require_digest(sealed, hash.digest()) {
            self.tampered.store(true, Ordering::SeqCst);
            tracing::error!("{e}; the registry refuses every request until it is restored");
            return Err(e);
        }
        Ok(())
    }

    fn refuse_if_tampered(&self) -> Result<(), RegistryError> {
        match self.tampered.load(Ordering::SeqCst) {
            true => Err(RegistryError::Tampered {
                what: "the set of records, found changed by the periodic check of every record"
                    .into(),
            }),
            false => Ok(()),
        }
    }

    /// Whether the registry's storage works: `Err` names the last failure while it lasts. A
    /// registry whose storage failed is tried again here (an empty write), so a node recovers
    /// by itself once, say, space is freed, even if nobody writes.
    pub fn health(&self) -> Result<(), String> {
        if let Err(e) = self.refuse_if_tampered() {
            return Err(e.to_string());
        }
        let failed = self
            .db
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(failure) = failed else {
            return Ok(());
        };
        let probe = self.db.note(self.db.get().and_then(|d| {
            let tx = d.begin_write().map_err(db)?;
            tx.commit().map_err(db)
        }));
        match probe {
            Ok(()) => {
                self.db.recovered();
                Ok(())
            }
            Err(_) => Err(failure),
        }
    }

    /// Runs `change` in one write transaction that also moves the version forward. In a
    /// cluster `change` may run more than once: again after another gateway's write won the
    /// race for the same version (see `shared.rs`).
    fn write<T>(
        &self,
        mut change: impl FnMut(&WriteTransaction) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let refusable = |tx: &WriteTransaction| change(tx).map(Ok::<T, Infallible>);
        match self.write_unless_refused(refusable)? {
            Ok(result) => Ok(result),
        }
    }

    /// Like [`Registry::write`], but `change` may refuse (`Ok(Err(..))`): then nothing is
    /// written and the version stays.
    fn write_unless_refused<T, E>(
        &self,
        mut change: impl FnMut(&WriteTransaction) -> Result<Result<T, E>, RegistryError>,
    ) -> Result<Result<T, E>, RegistryError> {
        let mut races_lost = 0;
        loop {
            // In a cluster, decide on the latest state: what other gateways wrote first.
            self.catch_up()?;
            let (tx, found, base) = self.begin()?;
            *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Pending::on(base);
            let result = match self.db.note(change(&tx))? {
                Ok(result) => result,
                Err(refused) => return Ok(Err(refused)),
            };
            let version = found + 1;
            let Pending { rows, hash } = self.take_pending();
            let digest = hash.digest();
            if !self.publish(version, &digest, &rows)? {
                // Another gateway wrote this version first: take its change and try again.
                drop(tx);
                races_lost += 1;
                self.after_lost_race(version, races_lost)?;
                continue;
            }
            self.finish(tx, version, hash)?;
            return Ok(Ok(result));
        }
    }

    /// A write transaction on the state the last write left, that state's version and its
    /// hash.
    fn begin(&self) -> Result<(WriteTransaction, u64, StateHash), RegistryError> {
        self.refuse_if_tampered()?;
        let tx = self
            .db
            .note(self.db.get().and_then(|d| d.begin_write().map_err(db)))?;
        let stored = match tx.open_table(META).map_err(db)?.get(VERSION).map_err(db)? {
            Some(sealed) => Some(self.open_version(sealed.value())?),
            None => None,
        };
        let sealed = stored.map_or_else(state_digest_of_nothing, |(_, digest)| digest);
        let known = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let base = if known.digest() == sealed {
            known
        } else {
            // This node does not hold the hash of what is sealed (a commit whose end it did
            // not see): hash every row once, and seal only on top of the state the last
            // write left.
            let full = hash_of(&tx)?;
            require_digest(Some(sealed), full.digest())?;
            full
        };
        let found = stored.map_or(0, |(version, _)| version);
        let expected = self.version();
        if found < expected {
            return Err(RegistryError::RolledBack { found, expected });
        }
        Ok((tx, found, base))
    }

    /// Seals `version` with the digest of `reached`, the hash of what `tx` holds now, and
    /// commits.
    fn finish(
        &self,
        tx: WriteTransaction,
        version: u64,
        reached: StateHash,
    ) -> Result<(), RegistryError> {
        let sealed = self.sealer.seal(
            META.name(),
            VERSION.as_bytes(),
            &version::encode(version, &reached.digest()),
        );
        tx.open_table(META)
            .map_err(db)?
            .insert(VERSION, sealed.as_slice())
            .map_err(db)?;
        // Kept before committing: the next writer may begin as soon as the commit releases
        // redb's write lock, and must find this hash (else it hashes every row). A commit that
        // fails leaves a hash that matches nothing sealed, which the next writer recomputes.
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = reached;
        self.db.note(tx.commit().map_err(db))?;
        self.db.recovered();
        self.version.fetch_max(version, Ordering::SeqCst);
        if let Err(e) = self.version_file.record(version) {
            // The change is committed; only rollback detection at the next start is weaker.
            tracing::warn!(
                "could not write the registry's version file {}: {e}",
                self.version_file.path().display()
            );
        }
        Ok(())
    }

    /// What the write under way changed.
    fn take_pending(&self) -> Pending {
        std::mem::replace(
            &mut self.pending.lock().unwrap_or_else(PoisonError::into_inner),
            Pending::on(StateHash::empty()),
        )
    }

    /// Records that a row of the write under way went from `old` to `new`.
    fn changed(&self, table: &str, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.hash.replace(table, key, old, new);
        pending.rows.push(Row {
            table: table.to_owned(),
            key: key.to_vec(),
            value: new.map(<[u8]>::to_vec),
        });
    }

    /// Stores a sealed row and records the change.
    fn insert_row(
        &self,
        table: &mut redb::Table<&'static [u8], &'static [u8]>,
        definition: Sealed,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<(), RegistryError> {
        let old = table
            .insert(key, sealed)
            .map_err(db)?
            .map(|v| v.value().to_vec());
        self.changed(definition.name(), key, old.as_deref(), Some(sealed));
        Ok(())
    }

    /// Removes a row, records the change, and returns what was there.
    fn remove_row(
        &self,
        table: &mut redb::Table<&'static [u8], &'static [u8]>,
        definition: Sealed,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let removed = table.remove(key).map_err(db)?.map(|v| v.value().to_vec());
        if removed.is_some() {
            self.changed(definition.name(), key, removed.as_deref(), None);
        }
        Ok(removed)
    }

    /// Stores one of the [`SHARED_META`] settings, sealed, and records the change.
    fn insert_shared_meta(
        &self,
        tx: &WriteTransaction,
        name: &'static str,
        plain: &[u8],
    ) -> Result<(), RegistryError> {
        debug_assert!(SHARED_META.contains(&name));
        let sealed = self.sealer.seal(META.name(), name.as_bytes(), plain);
        let old = tx
            .open_table(META)
            .map_err(db)?
            .insert(name, sealed.as_slice())
            .map_err(db)?
            .map(|v| v.value().to_vec());
        self.changed(META.name(), name.as_bytes(), old.as_deref(), Some(&sealed));
        Ok(())
    }

    fn open_version(&self, sealed: &[u8]) -> Result<(u64, [u8; 32]), RegistryError> {
        let plain = self
            .sealer
            .open(META.name(), VERSION.as_bytes(), sealed)
            .map_err(tampered("the version record"))?;
        version::decode(&plain).map_err(tampered("the version record"))
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        definition: Sealed,
        name: &[u8],
    ) -> Result<Option<T>, RegistryError> {
        let key = self.sealer.blind(definition.name(), name);
        self.get_at(table, definition, &key)
    }

    /// The record stored under `key` (already blinded).
    fn get_at<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        definition: Sealed,
        key: &[u8],
    ) -> Result<Option<T>, RegistryError> {
        let found = table.get(key).map_err(db)?;
        found
            .map(|sealed| self.decode(definition, key, sealed.value()))
            .transpose()
    }

    fn decode<T: DeserializeOwned>(
        &self,
        definition: Sealed,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<T, RegistryError> {
        let what = || format!("table {}", definition.name());
        let plain = self
            .sealer
            .open(definition.name(), key, sealed)
            .map_err(tampered(what()))?;
        serde_json::from_slice(&plain).map_err(|source| RegistryError::Corrupt {
            what: what(),
            source,
        })
    }

    fn put<T: Serialize>(
        &self,
        table: &mut redb::Table<&'static [u8], &'static [u8]>,
        definition: Sealed,
        name: &[u8],
        value: &T,
    ) -> Result<(), RegistryError> {
        let key = self.sealer.blind(definition.name(), name);
        self.put_at(table, definition, &key, value)
    }

    /// Stores `value` sealed under `key` (already blinded).
    fn put_at<T: Serialize + ?Sized>(
        &self,
        table: &mut redb::Table<&'static [u8], &'static [u8]>,
        definition: Sealed,
        key: &[u8],
        value: &T,
    ) -> Result<(), RegistryError> {
        let sealed = self.sealer.seal(definition.name(), key, &encode(value));
        self.insert_row(table, definition, key, &sealed)
    }

    fn remove<T: DeserializeOwned>(
        &self,
        table: &mut redb::Table<&'static [u8], &'static [u8]>,
        definition: Sealed,
        name: &[u8],
    ) -> Result<Option<T>, RegistryError> {
        let key = self.sealer.blind(definition.name(), name);
        let removed = self.remove_row(table, definition, &key)?;
        removed
            .map(|sealed| self.decode(definition, &key, &sealed))
            .transpose()
    }

    /// Every record of a table, authenticated.
    fn all<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        definition: Sealed,
    ) -> Result<Vec<T>, RegistryError> {
        let mut out = Vec::new();
        for entry in table.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            out.push(self.decode(definition, key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Creates the admin token on first start. Returns it (to be shown once) only when it was
    /// created now; afterwards only its hash exists.
    pub fn ensure_admin_token(&self) -> Result<Option<Token>, RegistryError> {
        {
            let tx = self.read()?;
            let meta = tx.open_table(META).map_err(db)?;
            if meta.get(ADMIN_TOKEN).map_err(db)?.is_some() {
                return Ok(None);
            }
        }
        let token = Token::generate();
        let created = self.write_unless_refused(|tx| {
            // Another gateway of the cluster may have made it meanwhile.
            if tx
                .open_table(META)
                .map_err(db)?
                .get(ADMIN_TOKEN)
                .map_err(db)?
                .is_some()
            {
                return Ok(Err(()));
            }
            self.insert_shared_meta(tx, ADMIN_TOKEN, &token.hash())?;
            let mut tokens = tx.open_table(TOKENS).map_err(db)?;
            self.put(
                &mut tokens,
                TOKENS,
                &token.hash(),
                &Principal::Admin.encode(),
            )
            .map(Ok)
        })?;
        Ok(created.ok().map(|()| token))
    }

    /// Who holds `secret`, if anyone. In a cluster a token unknown here is looked for again
    /// after catching up, so a tenant made on another gateway a moment ago is known.
    pub fn authenticate(&self, secret: &str) -> Result<Option<Principal>, RegistryError> {
        match self.authenticate_here(secret)? {
            None if self.catch_up()? > 0 => self.authenticate_here(secret),
            found => Ok(found),
        }
    }

    /// [`Registry::authenticate`] against this copy only: a token another gateway issued a
    /// moment ago is not found until the next catch-up. For callers that must not pay for a
    /// catch-up (an address that keeps sending unknown tokens).
    pub fn authenticate_here(&self, secret: &str) -> Result<Option<Principal>, RegistryError> {
        let hash = hash_secret(secret);
        let tx = self.read()?;
        let tokens = tx.open_table(TOKENS).map_err(db)?;
        let found: Option<String> = self.get(&tokens, TOKENS, &hash)?;
        Ok(found.and_then(|p| Principal::decode(&p)))
    }

    pub fn create_tenant(&self, name: &TenantName) -> Result<(Tenant, Token), RegistryError> {
        let token = Token::generate();
        let tenant = Tenant {
            name: name.clone(),
            created_at: now(),
            token_sha256: hex::encode(token.hash()),
        };
        self.write(|tx| {
            let mut tenants = tx.open_table(TENANTS).map_err(db)?;
            let existing: Option<Tenant> = self.get(&tenants, TENANTS, name.as_str().as_bytes())?;
            if existing.is_some() {
                return Err(RegistryError::TenantExists(name.clone()));
            }
            self.put(&mut tenants, TENANTS, name.as_str().as_bytes(), &tenant)?;
            let mut tokens = tx.open_table(TOKENS).map_err(db)?;
            let principal = Principal::Tenant(name.clone()).encode();
            self.put(&mut tokens, TOKENS, &token.hash(), &principal)
        })?;
        Ok((tenant, token))
    }

    /// Issues a new token for `name` and retires the old one.
    pub fn rotate_tenant_token(&self, name: &TenantName) -> Result<Token, RegistryError> {
        let token = Token::generate();
        self.write(|tx| {
            let mut tenants = tx.open_table(TENANTS).map_err(db)?;
            let mut tenant: Tenant = self
                .get(&tenants, TENANTS, name.as_str().as_bytes())?
                .ok_or_else(|| RegistryError::NoSuchTenant(name.clone()))?;
            let mut tokens = tx.open_table(TOKENS).map_err(db)?;
            if let Ok(old) = hex::decode(&tenant.token_sha256) {
                self.remove::<String>(&mut tokens, TOKENS, &old)?;
            }
            tenant.token_sha256 = hex::encode(token.hash());
            self.put(&mut tenants, TENANTS, name.as_str().as_bytes(), &tenant)?;
            let principal = Principal::Tenant(name.clone()).encode();
            self.put(&mut tokens, TOKENS, &token.hash(), &principal)
        })?;
        Ok(token)
    }

    pub fn tenant(&self, name: &TenantName) -> Result<Option<Tenant>, RegistryError> {
        let tx = self.read()?;
        let tenants = tx.open_table(TENANTS).map_err(db)?;
        self.get(&tenants, TENANTS, name.as_str().as_bytes())
    }

    /// Every tenant, by name.
    pub fn tenants(&self) -> Result<Vec<Tenant>, RegistryError> {
        let tx = self.read()?;
        let tenants = tx.open_table(TENANTS).map_err(db)?;
        let mut all: Vec<Tenant> = self.all(&tenants, TENANTS)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// A page of the tenants, by name within the page.
    pub fn tenants_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Tenant>, RegistryError> {
        let tx = self.read()?;
        let tenants = tx.open_table(TENANTS).map_err(db)?;
        let mut page = self.page::<Tenant>(&tenants, TENANTS, &[], cursor, limit)?;
        page.items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(page)
    }
}

/// Lists: rows read in stored-key order, a group or a table at a time.
impl Registry {
    /// A stored key whose first half is the same for every row of `group` (a tenant's
    /// functions, a function's versions), so one range scan reads one group. Both halves are
    /// blinded, as every stored key is: the host sees which rows belong together, not whose.
    fn grouped_key(&self, definition: Sealed, group: &[u8], name: &[u8]) -> [u8; 32] {
        let mut member = group.to_vec();
        member.push(0);
        member.extend_from_slice(name);
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&self.group_prefix(definition, group));
        key[16..].copy_from_slice(&self.sealer.blind(definition.name(), &member)[..16]);
        key
    }

    fn group_prefix(&self, definition: Sealed, group: &[u8]) -> [u8; 16] {
        let blinded = self.sealer.blind(definition.name(), group);
        blinded[..16].try_into().expect("16 of 32 bytes")
    }

    /// Every row of `group`.
    fn group_all<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        definition: Sealed,
        group: &[u8],
    ) -> Result<Vec<T>, RegistryError> {
        let prefix = self.group_prefix(definition, group);
        Ok(self
            .rows_from(table, definition, &prefix, None, usize::MAX)?
            .0)
    }

    /// A page of the rows of `group`.
    fn group_page<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        definition: Sealed,
        group: &[u8],
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, RegistryError> {
        let prefix = self.group_prefix(definition, group);
        self.page(table, definition, &prefix, cursor, limit)
    }

    /// A page of the rows whose stored key starts with `prefix` (empty: every row), after
    /// the row `cursor` names.
    fn page<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        definition: Sealed,
        prefix: &[u8],
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, RegistryError> {
        let list = [definition.name().as_bytes(), prefix].concat();
        let after = cursor
            .map(|cursor| self.open_cursor(&list, cursor))
            .transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);
        let (items, last, more) =
            self.rows_from(table, definition, prefix, after.as_deref(), limit)?;
        let next = match (more, last) {
            (true, Some(last)) => Some(self.seal_cursor(&list, &last)),
            _ => None,
        };
        Ok(Page { items, next })
    }

    /// Up to `limit` rows whose key starts with `prefix`, after the key `after`; with the
    /// last key read and whether more rows follow.
    #[allow(clippy::type_complexity)]
    fn rows_from<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        definition: Sealed,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<T>, Option<Vec<u8>>, bool), RegistryError> {
        use std::ops::Bound;
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(prefix),
        };
        let mut items = Vec::new();
        let mut last = None;
        for entry in table
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(db)?
        {
            let (key, value) = entry.map_err(db)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            if items.len() == limit {
                return Ok((items, last, true));
            }
            items.push(self.decode(definition, key.value(), value.value())?);
            last = Some(key.value().to_vec());
        }
        Ok((items, last, false))
    }

    /// A cursor naming the stored key `key` of list `list`, readable only by this registry.
    fn seal_cursor(&self, list: &[u8], key: &[u8]) -> String {
        hex::encode(self.sealer.seal("list cursor", list, key))
    }

    fn open_cursor(&self, list: &[u8], cursor: &str) -> Result<Vec<u8>, RegistryError> {
        let sealed = hex::decode(cursor).map_err(|_| RegistryError::BadCursor)?;
        self.sealer
            .open("list cursor", list, &sealed)
            .map_err(|_| RegistryError::BadCursor)
    }
}

/// Calls `row` with every row of the registry's state, in a fixed order: the shared settings,
/// then every table of sealed records (table, stored key, sealed value).
fn visit_rows<M, T>(
    meta: &M,
    tables: [(Sealed, Result<T, redb::TableError>); SEALED_TABLES.len()],
    mut row: impl FnMut(&str, &[u8], &[u8]),
) -> Result<(), RegistryError>
where
    M: ReadableTable<&'static str, &'static [u8]>,
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    for name in SHARED_META {
        if let Some(value) = meta.get(name).map_err(db)? {
            row(META.name(), name.as_bytes(), value.value());
        }
    }
    for (definition, table) in tables {
        let table = table.map_err(db)?;
        for entry in table.iter().map_err(db)? {
            let (key, value) = entry.map_err(db)?;
            row(definition.name(), key.value(), value.value());
        }
    }
    Ok(())
}

/// The hash of every row of the registry's state: what one version of the registry holds.
/// Its digest is sealed with the version at every write.
fn state_hash<M, T>(
    meta: &M,
    tables: [(Sealed, Result<T, redb::TableError>); SEALED_TABLES.len()],
) -> Result<StateHash, RegistryError>
where
    M: ReadableTable<&'static str, &'static [u8]>,
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut hash = StateHash::empty();
    visit_rows(meta, tables, |table, key, value| {
        hash.insert(table, key, value)
    })?;
    Ok(hash)
}

/// The hash of everything a write transaction holds now, from every row.
fn hash_of(tx: &WriteTransaction) -> Result<StateHash, RegistryError> {
    state_hash(
        &tx.open_table(META).map_err(db)?,
        SEALED_TABLES.map(|t| (t, tx.open_table(t))),
    )
}

/// The digest registries of format 1 sealed: SHA-256 over every row in the order
/// [`visit_rows`] gives. Read only to tell such a registry from a tampered one.
fn format_1_digest<'a>(rows: impl Iterator<Item = (&'a str, &'a [u8], &'a [u8])>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (table, key, value) in rows {
        for part in [table.as_bytes(), key, value] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
    }
    hash.finalize().into()
}

/// The rows a write changed (what a cluster's other gateways apply) and the state hash they
/// lead to.
struct Pending {
    rows: Vec<Row>,
    hash: StateHash,
}

impl Pending {
    fn on(base: StateHash) -> Self {
        Pending {
            rows: Vec::new(),
            hash: base,
        }
    }
}

/// The records must be those `sealed` covers (nothing at all before the first write).
fn require_digest(sealed: Option<[u8; 32]>, actual: [u8; 32]) -> Result<(), RegistryError> {
    if sealed.unwrap_or_else(state_digest_of_nothing) == actual {
        Ok(())
    } else {
        Err(RegistryError::Tampered {
            what: "the set of records (some were added, removed or replaced by older copies)"
                .into(),
        })
    }
}

fn state_digest_of_nothing() -> [u8; 32] {
    StateHash::empty().digest()
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("registry records always serialize")
}

fn wrap_data_key(data_key: &[u8; 32], sealing: &SealingKey) -> WrappedDataKey {
    WrappedDataKey {
        bound_to: sealing.bound_to.clone(),
        wrapped: hex::encode(sealed::seal(&sealing.key, DATA_KEY_CONTEXT, data_key)),
    }
}

fn new_data_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the operating system's random number generator");
    key
}

fn unwrap_data_key(
    path: &Path,
    stored: &[u8],
    sealing: &SealingKey,
) -> Result<[u8; 32], RegistryError> {
    let what = "the wrapped data key";
    let stored: WrappedDataKey =
        serde_json::from_slice(stored).map_err(|source| RegistryError::Corrupt {
            what: what.into(),
            source,
        })?;
    let wrapped =
        hex::decode(&stored.wrapped).map_err(|_| RegistryError::Tampered { what: what.into() })?;
    match sealed::open(&sealing.key, DATA_KEY_CONTEXT, &wrapped) {
        Ok(key) => key
            .try_into()
            .map_err(|_| RegistryError::Tampered { what: what.into() }),
        Err(_) if stored.bound_to != sealing.bound_to => {
            Err(RegistryError::SealedForAnotherBuild {
                path: path.display().to_string(),
                sealed_for: stored.bound_to,
                this: sealing.bound_to.clone(),
            })
        }
        Err(_) => Err(RegistryError::Tampered { what: what.into() }),
    }
}

mod cluster;
mod function_data;
mod functions;
use functions::FUNCTIONS;
mod invocations;
mod keys;
mod plugins;
mod shared;
mod state_hash;
mod triggers;
pub use cluster::ClusterSecrets;
pub use function_data::StateRefusal;
pub use invocations::{
    AsyncError, AsyncInvocation, AsyncStatus, Finish, Finished, StateRead, StateWrite, value_sha256,
};
pub use keys::TenantKey;
use shared::Row;
pub use shared::{RegistryKey, SharedError, SharedLog, Sharing};
use state_hash::StateHash;
pub use triggers::Trigger;

#[cfg(test)]
mod full_disk;
#[cfg(test)]
mod tests;
