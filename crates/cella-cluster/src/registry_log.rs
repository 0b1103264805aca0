//! The shared registry's log in JetStream KV (bucket [`REGISTRY_BUCKET`]): NATS stores and
//! replicates it; the gateways seal what is in it (see `cella-store`'s `shared.rs`). Slots
//! are keys: `genesis` (which names the chunks `g.<id>.<n>` holding the genesis, since a whole
//! registry outgrows one value; `base`, its version, is a hint), then `v.1`, `v.2`, …, each
//! written only if the key never had a value (JetStream checks the expected last sequence 0),
//! so two gateways never both get a version, and a forgotten entry (a delete marker) keeps
//! its slot taken. Each gateway follows the bucket, applies new entries as they appear, and
//! now and then compacts the log.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::{self, kv};
use cella_runtime::Platform;
use cella_store::{SharedError, SharedLog};
use futures::StreamExt;

use crate::bus::SealedBus;
use crate::subjects::REGISTRY_BUCKET;

/// How long one call on the bucket may take before the registry write or read fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a gateway catches up even when the bucket's watch said nothing (a watch lost
/// while NATS restarted, say).
const CATCH_UP_EVERY: Duration = Duration::from_secs(5);
/// How often a gateway looks whether the log should be compacted, and after how many
/// entries since the last genesis it is.
const COMPACT_EVERY: Duration = Duration::from_secs(60);
const COMPACT_AFTER: u64 = 1024;
const GENESIS: &str = "genesis";
/// Room left in a value for the message's headers.
const HEADER_ROOM: usize = 1024;
const BASE: &str = "base";

/// The registry's log in a JetStream KV bucket.
pub struct KvLog {
    store: kv::Store,
    /// The runtime the bucket's client runs on: the registry calls from blocking threads.
    runtime: tokio::runtime::Handle,
    /// The largest value NATS takes (its `max_payload`).
    max_value: usize,
}

fn unavailable(e: impl std::fmt::Display) -> SharedError {
    SharedError::Unavailable(e.to_string())
}

impl KvLog {
    /// Opens the cluster's registry bucket, creating it on first use (on disk, one value per
    /// key: every slot is written once).
    pub async fn open(client: &Client) -> Result<Arc<KvLog>, SharedError> {
        let js = jetstream::new(client.clone());
        let max_value = client.server_info().max_payload;
        // The bucket's stream, made as the KV API makes it (its own helper first asks for the
        // account's information, whose answer from older servers this client cannot read).
        js.get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{REGISTRY_BUCKET}"),
            description: Some("cella's shared registry: sealed genesis and entries".into()),
            subjects: vec![format!("$KV.{REGISTRY_BUCKET}.>")],
            max_messages_per_subject: 1,
            max_message_size: i32::try_from(max_value).unwrap_or(i32::MAX),
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("cannot create its bucket: {e}")))?;
        let store = js
            .get_key_value(REGISTRY_BUCKET)
            .await
            .map_err(unavailable)?;
        Ok(Arc::new(KvLog {
            store,
            runtime: tokio::runtime::Handle::current(),
            max_value,
        }))
    }

    /// Runs `call` on the client's runtime and waits for it on this (blocking) thread.
    fn block_on<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, SharedError>> + Send + 'static,
    ) -> Result<T, SharedError> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let result = tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| Err(unavailable(format!("no answer in {CALL_TIMEOUT:?}"))));
            let _ = answer.send(result);
        });
        // The call times itself out; this bound only guards against a runtime that never
        // gets to run it.
        let wait = || {
            answered
                .recv_timeout(CALL_TIMEOUT + Duration::from_secs(5))
                .unwrap_or_else(|_| Err(unavailable("the NATS client did not run the call")))
        };
        // Called on one of the runtime's own threads after all (it should not be), let the
        // runtime move its other tasks away rather than wait for the call on this thread.
        match tokio::runtime::Handle::try_current() {
            Ok(current)
                if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// Writes `value` under `key` if the key is at `revision` (0: never written, not even
    /// deleted); `false` if it is not.
    fn write_at(&self, key: String, value: Vec<u8>, revision: u64) -> Result<bool, SharedError> {
        if value.len() > self.largest_value() {
            return Err(SharedError::TooLarge {
                size: value.len(),
                limit: self.largest_value(),
            });
        }
        let store = self.store.clone();
        self.block_on(async move {
            match store.update(&key, value.into(), revision).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn read(&self, key: String) -> Result<Option<Vec<u8>>, SharedError> {
        let store = self.store.clone();
        self.block_on(async move {
            let found = store.get(key).await.map_err(unavailable)?;
            Ok(found.map(|value| value.to_vec()))
        })
    }

    /// The largest value one key takes, headers allowed for.
    fn largest_value(&self) -> usize {
        self.max_value.saturating_sub(HEADER_ROOM).max(1)
    }

    /// Writes `genesis` in chunks under a fresh id; returns the id and how many chunks.
    fn write_chunks(&self, genesis: &[u8]) -> Result<(String, usize), SharedError> {
        let id = hex::encode(cella_bus::random_id());
        let chunks: Vec<Vec<u8>> = genesis
            .chunks(self.largest_value())
            .map(<[u8]>::to_vec)
            .collect();
        let (store, count, key_id) = (self.store.clone(), chunks.len(), id.clone());
        self.block_on(async move {
            for (n, chunk) in chunks.into_iter().enumerate() {
                store
                    .put(chunk_key(&key_id, n), chunk.into())
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        })?;
        Ok((id, count))
    }

    fn forget_chunks(&self, head: &GenesisHead) {
        let (store, head) = (self.store.clone(), head.clone());
        let forgotten = self.block_on(async move {
            for n in 0..head.chunks {
                store
                    .delete(chunk_key(&head.id, n))
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        });
        if let Err(e) = forgotten {
            tracing::warn!("cannot remove an old genesis's chunks: {e}");
        }
    }

    /// The genesis's head (where its chunks are) and its revision.
    fn read_head(&self) -> Result<Option<(GenesisHead, u64)>, SharedError> {
        let store = self.store.clone();
        self.block_on(async move {
            let Some(entry) = store.entry(GENESIS).await.map_err(unavailable)? else {
                return Ok(None);
            };
            if entry.operation != kv::Operation::Put {
                return Ok(None);
            }
            // Unsealed, so only a pointer: what it points to is sealed and checked whole.
            let head: GenesisHead = serde_json::from_slice(&entry.value)
                .map_err(|e| unavailable(format!("the genesis's head is unreadable: {e}")))?;
            Ok(Some((head, entry.revision)))
        })
    }

    /// The genesis, put together from its chunks.
    fn read_genesis(&self) -> Result<Option<(Vec<u8>, u64)>, SharedError> {
        let Some((head, revision)) = self.read_head()? else {
            return Ok(None);
        };
        let store = self.store.clone();
        let genesis = self.block_on(async move {
            let mut genesis = Vec::new();
            for n in 0..head.chunks {
                let chunk = store
                    .get(chunk_key(&head.id, n))
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| {
                        unavailable("a chunk of the genesis is missing (replaced meanwhile?)")
                    })?;
                genesis.extend_from_slice(&chunk);
            }
            Ok(genesis)
        })?;
        Ok(Some((genesis, revision)))
    }

    /// Records the genesis's version where it is cheap to read.
    fn set_base(&self, base: u64) -> Result<(), SharedError> {
        let store = self.store.clone();
        self.block_on(async move {
            store
                .put(BASE, base.to_string().into())
                .await
                .map(drop)
                .map_err(unavailable)
        })
    }
}

/// Where the genesis lives: the chunks under one id.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct GenesisHead {
    id: String,
    chunks: usize,
}

fn chunk_key(id: &str, n: usize) -> String {
    format!("g.{id}.{n}")
}

fn entry_key(version: u64) -> String {
    format!("v.{version}")
}

impl SharedLog for KvLog {
    fn genesis(&self) -> Result<Option<(Vec<u8>, u64)>, SharedError> {
        // A compaction may replace it between reading the head and the chunks: read again.
        self.read_genesis().or_else(|_| self.read_genesis())
    }

    fn found(&self, genesis: Vec<u8>, base: u64) -> Result<bool, SharedError> {
        self.replace_genesis(genesis, base, 0)
    }

    fn replace_genesis(
        &self,
        genesis: Vec<u8>,
        base: u64,
        revision: u64,
    ) -> Result<bool, SharedError> {
        let old = match revision {
            0 => None,
            _ => self.read_head().ok().flatten().map(|(head, _)| head),
        };
        let (id, chunks) = self.write_chunks(&genesis)?;
        let head = GenesisHead { id, chunks };
        let pointer = serde_json::to_vec(&head).expect("serializes");
        if !self.write_at(GENESIS.to_owned(), pointer, revision)? {
            self.forget_chunks(&head);
            return Ok(false);
        }
        if let Some(old) = old {
            self.forget_chunks(&old);
        }
        self.set_base(base)?;
        Ok(true)
    }

    fn base(&self) -> Result<u64, SharedError> {
        // Only a hint: anything unreadable reads as "no compaction seen".
        let hint = self.read(BASE.to_owned())?;
        Ok(hint
            .and_then(|text| String::from_utf8(text).ok()?.parse().ok())
            .unwrap_or(0))
    }

    fn append(&self, version: u64, entry: Vec<u8>) -> Result<bool, SharedError> {
        self.write_at(entry_key(version), entry, 0)
    }

    fn entry(&self, version: u64) -> Result<Option<Vec<u8>>, SharedError> {
        self.read(entry_key(version))
    }

    fn forget(&self, version: u64) -> Result<(), SharedError> {
        let store = self.store.clone();
        self.block_on(async move { store.delete(entry_key(version)).await.map_err(unavailable) })
    }
}

/// Applies other gateways' entries as the bucket shows them (and every few seconds in any
/// case), and passes on what they changed: triggers to follow, a rotated cluster key.
pub(crate) async fn follow(log: Arc<KvLog>, bus: Arc<SealedBus>, platform: Arc<Platform>) {
    let mut applied = platform.watch_registry();
    let changed = {
        let (bus, platform) = (bus.clone(), platform.clone());
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                platform.triggers_may_have_changed();
                match platform.cluster_secrets() {
                    // Another gateway rotated: it announced it; this one only follows.
                    Ok(secrets) => bus.rotate(&secrets),
                    Err(e) => tracing::error!("cannot read the cluster key: {e}"),
                }
            }
        })
    };
    tokio::spawn(compact(platform.clone()));
    let mut every = tokio::time::interval(CATCH_UP_EVERY);
    loop {
        let mut watch = match log.store.watch("v.>").await {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::warn!(
                    "cannot watch the shared registry: {e}; catching up every {CATCH_UP_EVERY:?}"
                );
                None
            }
        };
        loop {
            let next = async {
                match watch.as_mut() {
                    Some(watch) => watch.next().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            };
            let watching = tokio::select! {
                seen = next => seen.is_some(),
                _ = every.tick() => true,
            };
            if let Err(e) = platform.catch_up_registry_fully().await {
                tracing::error!("cannot apply the shared registry's new entries: {e}");
            }
            if !watching {
                // The watch ended (NATS restarting, say): start another shortly.
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            }
        }
        if changed.is_finished() {
            return;
        }
    }
}

/// Compacts the log now and then: whichever gateway gets there first writes a new genesis.
async fn compact(platform: Arc<Platform>) {
    let mut every = tokio::time::interval(COMPACT_EVERY);
    loop {
        every.tick().await;
        match platform.compact_registry(COMPACT_AFTER).await {
            Ok(Some(version)) => {
                tracing::info!(version, "compacted the shared registry's log")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot compact the shared registry's log: {e}"),
        }
    }
}
