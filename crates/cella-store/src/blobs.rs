//! Function bytes, addressed by content hash, in any object_store backend. The store is
//! untrusted: every read is re-hashed and refused if it does not match (invariant 3).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cella_core::ContentHash;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is missing from the blob store")]
    Missing(ContentHash),
    #[error(
        "blob {expected} was changed in the blob store (its bytes now hash to {actual}); it was \
         not run. Redeploy the function to store a good copy"
    )]
    Tampered {
        expected: ContentHash,
        actual: ContentHash,
    },
    #[error("blob store error: {0}")]
    Backend(#[from] object_store::Error),
    #[error("blob store directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
}

impl BlobStore {
    /// A blob store in a local directory (created if missing).
    pub fn local(dir: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self::new(Arc::new(LocalFileSystem::new_with_prefix(dir)?)))
    }

    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        BlobStore { store }
    }

    fn location(hash: &ContentHash) -> object_store::path::Path {
        object_store::path::Path::from(format!("wasm/sha256/{}", hash.to_hex()))
    }

    /// Stores `bytes` under their hash (idempotent: equal bytes, equal key).
    pub async fn put(&self, bytes: Bytes) -> Result<ContentHash, BlobError> {
        let hash = ContentHash::of(&bytes);
        self.store
            .put(&Self::location(&hash), PutPayload::from(bytes))
            .await?;
        Ok(hash)
    }

    /// Reads the blob named `hash` and checks that its bytes still hash to it.
    pub async fn get_verified(&self, hash: &ContentHash) -> Result<Bytes, BlobError> {
        let bytes = match self.store.get(&Self::location(hash)).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::Missing(*hash)),
            Err(e) => return Err(e.into()),
        };
        let actual = ContentHash::of(&bytes);
        if actual != *hash {
            return Err(BlobError::Tampered {
                expected: *hash,
                actual,
            });
        }
        Ok(bytes)
    }

    pub async fn delete(&self, hash: &ContentHash) -> Result<(), BlobError> {
        match self.store.delete(&Self::location(hash)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Overwrites a blob without hashing: for tests that play a malicious storage host.
    #[doc(hidden)]
    pub async fn overwrite_unchecked(
        &self,
        hash: &ContentHash,
        bytes: Bytes,
    ) -> Result<(), BlobError> {
        self.store
            .put(&Self::location(hash), PutPayload::from(bytes))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_are_verified_against_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::local(dir.path()).unwrap();
        let hash = blobs
            .put(Bytes::from_static(b"\0asm module"))
            .await
            .unwrap();
        assert_eq!(
            &blobs.get_verified(&hash).await.unwrap()[..],
            b"\0asm module"
        );

        blobs
            .overwrite_unchecked(&hash, Bytes::from_static(b"\0asm evil"))
            .await
            .unwrap();
        let err = blobs.get_verified(&hash).await.unwrap_err();
        assert!(matches!(err, BlobError::Tampered { .. }), "{err}");

        let other = ContentHash::of(b"never stored");
        assert!(matches!(
            blobs.get_verified(&other).await.unwrap_err(),
            BlobError::Missing(_)
        ));
    }
}
