//! Compiled code by content hash: each distinct .wasm is compiled once per process, however
//! many functions or concurrent first invocations use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cella_core::ContentHash;
use cella_sandbox::Compiled;
use tokio::sync::OnceCell;

use crate::RuntimeError;

#[derive(Default)]
pub(crate) struct CodeCache {
    entries: Mutex<HashMap<ContentHash, Arc<OnceCell<Compiled>>>>,
}

impl CodeCache {
    fn slot(&self, hash: &ContentHash) -> Arc<OnceCell<Compiled>> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(*hash)
            .or_default()
            .clone()
    }

    /// The compiled code for `hash`, running `load` only if no one has (concurrent callers
    /// wait for the first one instead of compiling again).
    pub(crate) async fn get_or_load(
        &self,
        hash: &ContentHash,
        load: impl Future<Output = Result<Compiled, RuntimeError>>,
    ) -> Result<Compiled, RuntimeError> {
        self.slot(hash).get_or_try_init(|| load).await.cloned()
    }

    pub(crate) fn insert(&self, hash: &ContentHash, compiled: Compiled) {
        let _ = self.slot(hash).set(compiled);
    }

    pub(crate) fn remove(&self, hash: &ContentHash) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hash);
    }
}
