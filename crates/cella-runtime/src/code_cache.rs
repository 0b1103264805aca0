//! Compiled code by content hash: each distinct .wasm is compiled (or loaded from its sealed
//! precompiled form) once while cached, however many functions or concurrent first
//! invocations use it. The cache holds at most `capacity` bytes of compiled images and forgets
//! the least recently used beyond that, so a node with many functions does not keep every one
//! in memory; a forgotten one is loaded again from its sealed precompiled code (about 1 ms),
//! exactly as after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cella_core::ContentHash;
use cella_sandbox::Compiled;
use tokio::sync::OnceCell;

use crate::RuntimeError;

pub(crate) struct CodeCache {
    capacity: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_hash: HashMap<ContentHash, Entry>,
    /// Bytes of the images held (loaded entries only).
    bytes: usize,
    /// Advances with every use: an entry's `used` orders the least recently used first.
    clock: u64,
}

struct Entry {
    cell: Arc<OnceCell<Compiled>>,
    /// The image's size once loaded (0 while loading).
    bytes: usize,
    used: u64,
}

impl CodeCache {
    /// A cache holding at most `capacity` bytes of compiled images (at least one image, however
    /// large).
    pub(crate) fn new(capacity: usize) -> Self {
        CodeCache {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// The entry for `hash`, marked as just used.
    fn slot(&self, hash: &ContentHash) -> Arc<OnceCell<Compiled>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.clock += 1;
        let used = inner.clock;
        let entry = inner.by_hash.entry(*hash).or_insert_with(|| Entry {
            cell: Arc::default(),
            bytes: 0,
            used,
        });
        entry.used = used;
        entry.cell.clone()
    }

    /// The compiled code for `hash`, running `load` only if it is not cached (concurrent
    /// callers wait for the first one instead of loading again).
    pub(crate) async fn get_or_load(
        &self,
        hash: &ContentHash,
        load: impl Future<Output = Result<Compiled, RuntimeError>>,
    ) -> Result<Compiled, RuntimeError> {
        let cell = self.slot(hash);
        let mut loaded_now = false;
        let loaded = cell
            .get_or_try_init(|| async {
                loaded_now = true;
                load.await
            })
            .await;
        let compiled = match loaded {
            Ok(compiled) => compiled.clone(),
            Err(e) => {
                self.forget_unloaded(hash, &cell);
                return Err(e);
            }
        };
        if loaded_now {
            self.account(hash, &cell, compiled.image_bytes());
        }
        Ok(compiled)
    }

    pub(crate) fn insert(&self, hash: &ContentHash, compiled: Compiled) {
        let cell = self.slot(hash);
        let bytes = compiled.image_bytes();
        if cell.set(compiled).is_ok() {
            self.account(hash, &cell, bytes);
        }
    }

    pub(crate) fn remove(&self, hash: &ContentHash) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = inner.by_hash.remove(hash) {
            inner.bytes -= entry.bytes;
        }
    }

    /// Drops the entry `cell` of `hash` if nothing was loaded into it (its load failed), so
    /// entries that hold nothing do not pile up.
    fn forget_unloaded(&self, hash: &ContentHash, cell: &Arc<OnceCell<Compiled>>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = inner.by_hash.get(hash)
            && Arc::ptr_eq(&entry.cell, cell)
            && cell.get().is_none()
        {
            inner.by_hash.remove(hash);
        }
    }

    /// Bytes of compiled images held now.
    pub(crate) fn held_bytes(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }

    /// Counts the image `cell` just loaded for `hash`, then forgets the least recently used
    /// images while the cache holds more than its capacity (never the one just loaded).
    fn account(&self, hash: &ContentHash, cell: &Arc<OnceCell<Compiled>>, bytes: usize) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.by_hash.get_mut(hash) {
            // Still the entry loaded (not removed, nor replaced, meanwhile).
            Some(entry) if Arc::ptr_eq(&entry.cell, cell) && entry.bytes == 0 => {
                entry.bytes = bytes;
                inner.bytes += bytes;
            }
            _ => return,
        }
        while inner.bytes > self.capacity {
            let oldest = inner
                .by_hash
                .iter()
                .filter(|(h, e)| *h != hash && e.bytes > 0)
                .min_by_key(|(_, e)| e.used)
                .map(|(h, _)| *h);
            let Some(oldest) = oldest else { break };
            if let Some(entry) = inner.by_hash.remove(&oldest) {
                // Invocations holding it keep their copy until they end.
                inner.bytes -= entry.bytes;
            }
        }
    }
}
