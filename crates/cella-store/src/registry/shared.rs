//! One registry shared by a cluster's gateways.
//!
//! Each gateway keeps its own sealed copy (the redb file, checked as on a single node); what
//! makes the copies one registry is a log in the cluster's storage (JetStream KV, replicated
//! by NATS, see `cella-cluster`): a sealed **genesis** (every row at the version the cluster
//! was founded with) and one sealed **entry** per later version (the rows that write changed
//! and the digest of the state it leads to). Writing version `n` means winning the log's slot
//! `n` (create-if-absent): a gateway that loses the race applies the winner's entry and runs
//! its change again on top of it, so writes are serialised across gateways exactly as redb
//! serialises them on one. Gateways apply each other's entries in order, each checked:
//! sealed under the registry's data key for that very version, touching only the registry's
//! own tables, and leading to the state digest it names. The log is as untrusted as the disk:
//! it sees sealed rows under blinded keys; an entry changed, replayed at another version or
//! dropped is refused or stalls the registry, never applied.
//!
//! The log is **compacted** ([`Registry::compact`]): a gateway replaces the genesis with its
//! whole state at its version (compare-and-set on the genesis, so one compaction wins) and
//! forgets the entries it covers. A forgotten slot can never be written again, so a gateway
//! that fell behind the new genesis loses every race and, like one that finds the next entry
//! gone, takes the genesis instead (its copy only moves forward).

use std::sync::Arc;
use std::time::Duration;

use redb::{TableHandle, WriteTransaction};

use super::{
    META, Registry, RegistryError, SEALED_TABLES, SHARED_META, db, require_digest, tampered,
    visit_rows,
};

/// What the log's records are sealed as (a context of their own, like a table's name).
const LOG: &str = "shared registry log";
const GENESIS: &[u8] = b"genesis";
/// How often one write may lose the race for its version before it gives up.
const MAX_RACES_LOST: u32 = 64;

/// Where a cluster's gateways keep the registry's log. Calls block: implementations bridge
/// to their own runtime (the registry is called from blocking threads).
pub trait SharedLog: Send + Sync {
    /// The genesis, once the cluster has one, and its revision (for [`Self::replace_genesis`]).
    fn genesis(&self) -> Result<Option<(Vec<u8>, u64)>, SharedError>;
    /// Stores `genesis` (of version `base`) unless the log already has one; `false` if it had.
    fn found(&self, genesis: Vec<u8>, base: u64) -> Result<bool, SharedError>;
    /// Replaces the genesis with one of version `base` if it is still at `revision`; `false`
    /// if another gateway replaced it first.
    fn replace_genesis(
        &self,
        genesis: Vec<u8>,
        base: u64,
        revision: u64,
    ) -> Result<bool, SharedError>;
    /// The version of the genesis, as a hint that is cheap to read (never trusted: a gateway
    /// that believes it is behind reads and checks the genesis itself).
    fn base(&self) -> Result<u64, SharedError>;
    /// Stores `entry` as version `version` unless that slot was ever written (even if
    /// forgotten since); `false` if it was.
    fn append(&self, version: u64, entry: Vec<u8>) -> Result<bool, SharedError>;
    /// The entry of `version`, if written and not forgotten.
    fn entry(&self, version: u64) -> Result<Option<Vec<u8>>, SharedError>;
    /// Forgets the entry of `version` (a genesis covers it now); its slot stays taken.
    fn forget(&self, version: u64) -> Result<(), SharedError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(
        "the cluster's shared registry cannot be reached: {0}; check that NATS runs with \
         JetStream (`cella doctor`)"
    )]
    Unavailable(String),
    #[error(
        "this gateway's registry is not the cluster's (it was sealed under another data key). \
         A gateway with a fresh data directory joins the cluster's registry by attestation; \
         start this one with an empty --data-dir, or point it at its own NATS server"
    )]
    OtherCluster,
    #[error(
        "the shared registry's log says version {version} is taken but does not show it: \
         NATS may be withholding entries. Nothing was written; try again, and check the \
         NATS server's health"
    )]
    Stalled { version: u64 },
    #[error(
        "this gateway's registry at version {version} differs from the cluster's log: the log \
         or this copy was rewritten. Refusing to use either; move this gateway's data \
         directory away and let it join again"
    )]
    Forked { version: u64 },
    #[error(
        "the change is {size} bytes sealed, more than the shared registry takes in one entry \
         ({limit}); raise NATS's max_payload or keep less in one record"
    )]
    TooLarge { size: usize, limit: usize },
}

/// The registry's data key, as handed to a gateway admitted to share the registry (sealed to
/// its attested key, never in clear). Its `Debug` shows nothing.
#[derive(Clone)]
pub struct RegistryKey(pub(super) [u8; 32]);

impl RegistryKey {
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<RegistryKey> {
        bytes.try_into().ok().map(RegistryKey)
    }
}

impl std::fmt::Debug for RegistryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryKey(<redacted>)")
    }
}

/// How a registry came to share the cluster's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The log was empty: this registry's state is the cluster's genesis.
    Founded { version: u64 },
    /// The log existed: this registry caught up from `from` to `to`.
    Joined { from: u64, to: u64 },
}

/// One row of the registry's state as it changed: `value` is `None` when it was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) table: String,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

impl Registry {
    /// The data key, to hand (sealed to its attested key) to a gateway joining the cluster.
    pub fn shared_key(&self) -> RegistryKey {
        self.data_key.clone()
    }

    /// Shares this registry through `log` from now on: founds the log with this registry's
    /// state if it is empty, else checks that this copy is a state the log went through and
    /// catches up. A fresh registry (version 0) takes the genesis as it is.
    pub fn share(&self, log: Arc<dyn SharedLog>) -> Result<Sharing, RegistryError> {
        let genesis = match log.genesis()? {
            Some((genesis, _)) => genesis,
            None => {
                let (version, genesis) = self.seal_genesis()?;
                if log.found(genesis, version)? {
                    self.start_sharing(log);
                    return Ok(Sharing::Founded { version });
                }
                // Another gateway founded it at the same moment.
                let founded = log.genesis()?.ok_or_else(|| {
                    SharedError::Unavailable(
                        "the log's genesis vanished after it was written".into(),
                    )
                })?;
                founded.0
            }
        };
        let (base, digest, rows) = self.open_genesis(&genesis)?;
        let mine = self.version();
        if mine < base {
            // A fresh copy, or one older than the log's last compaction: the genesis, sealed
            // by the cluster, is the state to go on from.
            self.load(base, &digest, &rows)?;
        } else {
            self.check_on_log(&*log, mine, base, &digest)?;
        }
        self.start_sharing(log);
        self.catch_up_fully()?;
        Ok(Sharing::Joined {
            from: mine,
            to: self.version(),
        })
    }

    fn start_sharing(&self, log: Arc<dyn SharedLog>) {
        // A registry shares one log for its lifetime; a second call keeps the first.
        let _ = self.log.set(log);
    }

    /// This copy at `version` must be the state the log reached at that version.
    fn check_on_log(
        &self,
        log: &dyn SharedLog,
        version: u64,
        base: u64,
        genesis_digest: &[u8; 32],
    ) -> Result<(), RegistryError> {
        let logged = if version == base {
            Some(*genesis_digest)
        } else {
            match log.entry(version)? {
                Some(entry) => Some(self.open_entry(version, &entry)?.0),
                // Compacted since the genesis was read? Then a newer genesis covers this
                // version, and the catch-up that follows takes it.
                None => match log.genesis()? {
                    Some((genesis, _)) => {
                        let (base, digest, _) = self.open_genesis(&genesis)?;
                        match base.cmp(&version) {
                            std::cmp::Ordering::Greater => return Ok(()),
                            std::cmp::Ordering::Equal => Some(digest),
                            std::cmp::Ordering::Less => None,
                        }
                    }
                    None => None,
                },
            }
        };
        let tx = self.read()?;
        let mine = self
            .stored_state(&tx)?
            .map_or_else(super::state_digest_of_nothing, |(_, digest)| digest);
        match logged {
            Some(logged) if mine == logged => Ok(()),
            // The log never went this far: this copy holds writes the cluster does not.
            _ => Err(SharedError::Forked { version }.into()),
        }
    }

    fn open_genesis(&self, sealed: &[u8]) -> Result<(u64, [u8; 32], Vec<Row>), RegistryError> {
        let plain = self
            .sealer
            .open(LOG, GENESIS, sealed)
            .map_err(|_| SharedError::OtherCluster)?;
        decode_genesis(&plain).ok_or_else(|| RegistryError::Tampered {
            what: "the shared registry's genesis".into(),
        })
    }

    /// [`Registry::catch_up`], first taking the genesis if the log was compacted past this
    /// copy's version (the gateway was away, or slow). Reads a small hint each time, and the
    /// genesis only when the hint says this copy is behind it.
    pub fn catch_up_fully(&self) -> Result<u64, RegistryError> {
        let Some(log) = self.log.get() else {
            return Ok(0);
        };
        let rebased = log.base()? > self.version() && self.rebase(&**log)?;
        Ok(self.catch_up()? + u64::from(rebased))
    }

    /// Takes the genesis if it is ahead of this copy; whether it was.
    fn rebase(&self, log: &dyn SharedLog) -> Result<bool, RegistryError> {
        let Some((genesis, _)) = log.genesis()? else {
            return Ok(false);
        };
        let (base, digest, rows) = self.open_genesis(&genesis)?;
        if base <= self.version() {
            return Ok(false);
        }
        self.load(base, &digest, &rows)?;
        Ok(true)
    }

    /// Replaces the log's genesis with this copy's state and forgets the entries it covers,
    /// if at least `min_entries` have gathered since the last genesis. Returns the new
    /// genesis's version, or `None` when nothing was done (too few entries, not shared, or
    /// another gateway compacted first).
    pub fn compact(&self, min_entries: u64) -> Result<Option<u64>, RegistryError> {
        let Some(log) = self.log.get() else {
            return Ok(None);
        };
        self.catch_up_fully()?;
        let Some((current, revision)) = log.genesis()? else {
            return Ok(None);
        };
        let (old_base, ..) = self.open_genesis(&current)?;
        let (version, genesis) = self.seal_genesis()?;
        if version < old_base.saturating_add(min_entries) {
            return Ok(None);
        }
        if !log.replace_genesis(genesis, version, revision)? {
            return Ok(None);
        }
        for forgotten in old_base + 1..=version {
            log.forget(forgotten)?;
        }
        Ok(Some(version))
    }

    /// Applies every entry other gateways wrote since this copy's version; returns how many.
    pub fn catch_up(&self) -> Result<u64, RegistryError> {
        let Some(log) = self.log.get() else {
            return Ok(0);
        };
        let mut applied = 0;
        loop {
            let next = self.version() + 1;
            let Some(entry) = log.entry(next)? else {
                break;
            };
            if self.apply(next, &entry)? {
                applied += 1;
            }
        }
        if applied > 0 {
            self.applied.send_replace(self.version());
        }
        Ok(applied)
    }

    /// Moves whenever entries of other gateways were applied (to the version reached).
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Writes this write's entry into the log's slot `version`; `false` if another gateway
    /// took it first. Without a log there is nothing to race.
    pub(super) fn publish(
        &self,
        version: u64,
        digest: &[u8; 32],
        changes: &[Row],
    ) -> Result<bool, RegistryError> {
        let Some(log) = self.log.get() else {
            return Ok(true);
        };
        let mut plain = digest.to_vec();
        encode_rows(&mut plain, changes);
        let entry = self.sealer.seal(LOG, &version.to_le_bytes(), &plain);
        Ok(log.append(version, entry)?)
    }

    /// After losing the race for `version`: takes the winner's entry, backing off if the log
    /// does not show it yet, and gives up once it is clearly withheld.
    pub(super) fn after_lost_race(
        &self,
        version: u64,
        races_lost: u32,
    ) -> Result<(), RegistryError> {
        if races_lost > MAX_RACES_LOST {
            return Err(SharedError::Stalled { version }.into());
        }
        let Some(log) = self.log.get() else {
            return Ok(());
        };
        // The slot is taken but its entry not shown: either the log was compacted past this
        // copy (take the genesis), or the winner's entry is not visible yet (wait a little).
        if self.catch_up()? == 0 && !self.rebase(&**log)? {
            std::thread::sleep(Duration::from_millis(5 * u64::from(races_lost)));
        }
        Ok(())
    }

    /// Applies the entry of `version` if this copy is just before it; `false` if it already
    /// has it (a concurrent catch-up applied it).
    fn apply(&self, version: u64, sealed: &[u8]) -> Result<bool, RegistryError> {
        let (tx, found, mut hash) = self.begin()?;
        if found >= version {
            return Ok(false);
        }
        let (digest, rows) = self.open_entry(version, sealed)?;
        self.write_rows(&tx, &rows, &mut hash)?;
        require_logged_digest(version, &digest, &hash.digest())?;
        self.finish(tx, version, hash)?;
        Ok(true)
    }

    /// Replaces this copy's state with a genesis's, of a later version.
    fn load(&self, version: u64, digest: &[u8; 32], rows: &[Row]) -> Result<(), RegistryError> {
        let (tx, found, _) = self.begin()?;
        if found >= version {
            return Ok(()); // a concurrent catch-up got as far
        }
        clear_rows(&tx)?;
        // Cleared, the state hashes as empty; each row written adds itself (and takes out
        // what it replaced, should the genesis name a row twice).
        let mut hash = super::StateHash::empty();
        self.write_rows(&tx, rows, &mut hash)?;
        let format_1 = || {
            super::format_1_digest(
                rows.iter()
                    .filter_map(|r| Some((r.table.as_str(), &r.key[..], r.value.as_deref()?))),
            )
        };
        if hash.digest() != *digest && format_1() == *digest {
            return Err(RegistryError::OlderFormat);
        }
        require_logged_digest(version, digest, &hash.digest())?;
        self.finish(tx, version, hash)?;
        // Whatever the genesis changed (triggers, the cluster key) is news to the platform.
        self.applied.send_replace(version);
        Ok(())
    }

    fn open_entry(
        &self,
        version: u64,
        sealed: &[u8],
    ) -> Result<([u8; 32], Vec<Row>), RegistryError> {
        let what = format!("entry {version} of the shared registry's log");
        let plain = self
            .sealer
            .open(LOG, &version.to_le_bytes(), sealed)
            .map_err(tampered(what.clone()))?;
        decode_entry(&plain).ok_or(RegistryError::Tampered { what })
    }

    /// Writes rows that came from the log, each only into a table of the registry's state,
    /// and updates `hash` by what each replaced.
    fn write_rows(
        &self,
        tx: &WriteTransaction,
        rows: &[Row],
        hash: &mut super::StateHash,
    ) -> Result<(), RegistryError> {
        let foreign = |row: &Row| RegistryError::Tampered {
            what: format!("a row of the shared registry's log for `{}`", row.table),
        };
        for row in rows {
            if row.table == META.name() {
                let name = SHARED_META
                    .into_iter()
                    .find(|name| name.as_bytes() == row.key)
                    .ok_or_else(|| foreign(row))?;
                let mut meta = tx.open_table(META).map_err(db)?;
                let old = match &row.value {
                    Some(value) => meta.insert(name, value.as_slice()),
                    None => meta.remove(name),
                }
                .map_err(db)?
                .map(|v| v.value().to_vec());
                hash.replace(&row.table, &row.key, old.as_deref(), row.value.as_deref());
            } else {
                let definition = SEALED_TABLES
                    .into_iter()
                    .find(|table| table.name() == row.table)
                    .ok_or_else(|| foreign(row))?;
                let mut table = tx.open_table(definition).map_err(db)?;
                let old = match &row.value {
                    Some(value) => table.insert(row.key.as_slice(), value.as_slice()),
                    None => table.remove(row.key.as_slice()),
                }
                .map_err(db)?
                .map(|v| v.value().to_vec());
                hash.replace(&row.table, &row.key, old.as_deref(), row.value.as_deref());
            }
        }
        Ok(())
    }

    /// This registry's whole state, sealed as a genesis, and its version.
    fn seal_genesis(&self) -> Result<(u64, Vec<u8>), RegistryError> {
        let tx = self.read()?;
        let (version, digest) = self
            .stored_state(&tx)?
            .unwrap_or((0, super::state_digest_of_nothing()));
        let mut rows = Vec::new();
        visit_rows(
            &tx.open_table(META).map_err(db)?,
            SEALED_TABLES.map(|t| (t, tx.open_table(t))),
            |table, key, value| {
                rows.push(Row {
                    table: table.to_owned(),
                    key: key.to_vec(),
                    value: Some(value.to_vec()),
                })
            },
        )?;
        let mut plain = version.to_le_bytes().to_vec();
        plain.extend_from_slice(&digest);
        encode_rows(&mut plain, &rows);
        Ok((version, self.sealer.seal(LOG, GENESIS, &plain)))
    }
}

/// Removes every row of the registry's state (before a genesis replaces it).
fn clear_rows(tx: &WriteTransaction) -> Result<(), RegistryError> {
    let mut meta = tx.open_table(META).map_err(db)?;
    for name in SHARED_META {
        meta.remove(name).map_err(db)?;
    }
    for definition in SEALED_TABLES {
        tx.open_table(definition)
            .map_err(db)?
            .retain(|_, _| false)
            .map_err(db)?;
    }
    Ok(())
}

fn require_logged_digest(
    version: u64,
    logged: &[u8; 32],
    reached: &[u8; 32],
) -> Result<(), RegistryError> {
    require_digest(Some(*logged), *reached).map_err(|_| RegistryError::Tampered {
        what: format!(
            "entry {version} of the shared registry's log (it does not lead to the state it names)"
        ),
    })
}

/// Rows as `table (u16 length) · key (u32 length) · present (u8) · value (u32 length)`.
fn encode_rows(out: &mut Vec<u8>, rows: &[Row]) {
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for row in rows {
        out.extend_from_slice(&(row.table.len() as u16).to_le_bytes());
        out.extend_from_slice(row.table.as_bytes());
        out.extend_from_slice(&(row.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&row.key);
        match &row.value {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            None => out.push(0),
        }
    }
}

/// A cursor over bytes that refuses every length past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<usize> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize)
    }

    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    fn digest(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }

    fn rows(&mut self) -> Option<Vec<Row>> {
        let count = self.u32()?;
        // Each row takes at least 11 bytes: a count past what remains is a lie.
        if count > self.0.len() / 11 {
            return None;
        }
        let mut rows = Vec::with_capacity(count);
        for _ in 0..count {
            let table_len = self.u16()?;
            let table = String::from_utf8(self.take(table_len)?.to_vec()).ok()?;
            let key_len = self.u32()?;
            let key = self.take(key_len)?.to_vec();
            let value = match self.u8()? {
                0 => None,
                1 => {
                    let len = self.u32()?;
                    Some(self.take(len)?.to_vec())
                }
                _ => return None,
            };
            rows.push(Row { table, key, value });
        }
        Some(rows)
    }

    fn end(self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

fn decode_entry(bytes: &[u8]) -> Option<([u8; 32], Vec<Row>)> {
    let mut reader = Reader(bytes);
    let digest = reader.digest()?;
    let rows = reader.rows()?;
    reader.end()?;
    Some((digest, rows))
}

fn decode_genesis(bytes: &[u8]) -> Option<(u64, [u8; 32], Vec<Row>)> {
    let mut reader = Reader(bytes);
    let version = u64::from_le_bytes(reader.take(8)?.try_into().ok()?);
    let digest = reader.digest()?;
    let rows = reader.rows()?;
    reader.end()?;
    Some((version, digest, rows))
}

#[cfg(test)]
mod tests;
