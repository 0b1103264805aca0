//! A storage host that lies, for the malicious-host test harness: an `ObjectStore` that keeps
//! what it is given honestly (in memory) and answers reads with the [`Lie`] it is set to tell.
//! Built only with the `lying-host` feature; nodes never contain it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// How reads are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// The truth.
    Honest,
    /// The stored bytes with one bit flipped in the middle.
    FlipBit,
    /// The first half of the stored bytes.
    Truncate,
    /// No bytes at all.
    Empty,
    /// Another object's bytes (the first other one stored): a swap.
    Swap,
    /// The bytes first stored under this name, whatever was written since (a rollback).
    Stale,
    /// "Not found", though it was stored.
    Missing,
    /// An I/O error.
    Fail,
}

/// An object store whose reads lie as told; writes are kept honestly.
pub struct LyingStore {
    inner: InMemory,
    lie: Mutex<Lie>,
    /// The first bytes stored under each name (what [`Lie::Stale`] serves).
    first: Mutex<BTreeMap<Path, Bytes>>,
    lies_told: AtomicU64,
}

impl LyingStore {
    pub fn new() -> Arc<Self> {
        Arc::new(LyingStore {
            inner: InMemory::new(),
            lie: Mutex::new(Lie::Honest),
            first: Mutex::default(),
            lies_told: AtomicU64::new(0),
        })
    }

    /// From now on, reads answer with `lie`.
    pub fn tell(&self, lie: Lie) {
        *self.lie.lock().unwrap_or_else(PoisonError::into_inner) = lie;
    }

    /// How many reads were answered with a lie.
    pub fn lies_told(&self) -> u64 {
        self.lies_told.load(Ordering::Relaxed)
    }

    fn lie(&self) -> Lie {
        *self.lie.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bytes a read of `location` gets, by the current lie.
    async fn answer(&self, location: &Path) -> Result<Option<Bytes>> {
        let lie = self.lie();
        let truth = || async { self.inner.get(location).await?.bytes().await };
        let told = match lie {
            Lie::Honest => return truth().await.map(Some),
            Lie::FlipBit => {
                let mut bytes = truth().await?.to_vec();
                let middle = bytes.len() / 2;
                if let Some(byte) = bytes.get_mut(middle) {
                    *byte ^= 0x01;
                }
                Some(Bytes::from(bytes))
            }
            Lie::Truncate => {
                let bytes = truth().await?;
                Some(bytes.slice(..bytes.len() / 2))
            }
            Lie::Empty => Some(Bytes::new()),
            Lie::Swap => {
                let other = self
                    .first
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .find(|(path, _)| *path != location)
                    .map(|(_, bytes)| bytes.clone());
                match other {
                    Some(bytes) => Some(bytes),
                    None => return truth().await.map(Some),
                }
            }
            Lie::Stale => {
                let first = self
                    .first
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(location)
                    .cloned();
                match first {
                    Some(bytes) => Some(bytes),
                    None => return truth().await.map(Some),
                }
            }
            Lie::Missing => None,
            Lie::Fail => {
                self.lies_told.fetch_add(1, Ordering::Relaxed);
                return Err(object_store::Error::Generic {
                    store: "lying",
                    source: "the disk is on fire".into(),
                });
            }
        };
        self.lies_told.fetch_add(1, Ordering::Relaxed);
        Ok(told)
    }
}

impl fmt::Debug for LyingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LyingStore({:?})", self.lie())
    }
}

impl fmt::Display for LyingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lying://{:?}", self.lie())
    }
}

#[async_trait::async_trait]
impl ObjectStore for LyingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let bytes: Bytes = payload.clone().into();
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(location.clone())
            .or_insert(bytes);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let honest = self.inner.get_opts(location, options).await?;
        let Some(bytes) = self.answer(location).await? else {
            return Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "the lying host says it is gone".into(),
            });
        };
        let meta = ObjectMeta {
            size: bytes.len() as u64,
            ..honest.meta
        };
        let stream = futures::stream::once(async move { Ok(bytes) }).boxed();
        Ok(GetResult {
            range: 0..meta.size,
            meta,
            payload: GetResultPayload::Stream(stream),
            attributes: honest.attributes,
            extensions: honest.extensions,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
