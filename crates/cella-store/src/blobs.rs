//! Function bytes, addressed by content hash, in any object_store backend. The store is
//! untrusted: blobs are sealed (XChaCha20-Poly1305 bound to their hash) under names that are
//! HMACs of the hash, so the host learns neither the code nor which known module a tenant
//! deployed; every read is authenticated and re-hashed, and refused if either fails
//! (invariant 3).

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
        "blob {hash} was changed in the blob store ({detail}); it was not run. Redeploy the \
         function to store a good copy"
    )]
    Tampered { hash: ContentHash, detail: String },
    #[error("blob store error: {0}")]
    Backend(#[from] object_store::Error),
    #[error("blob store directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "blob store URL `{url}`: {reason}; this build stores blobs at `file:///ABSOLUTE/PATH` \
         or `memory:///` (S3-compatible stores are not built in yet)"
    )]
    Url { url: String, reason: String },
}

/// The key that seals a platform's blobs (derived from the registry's data key).
#[derive(Clone)]
pub struct BlobKey {
    encryption: [u8; 32],
    naming: [u8; 32],
}

impl BlobKey {
    /// Length of [`BlobKey::to_bytes`].
    pub const ENCODED_LEN: usize = 64;

    /// The key's bytes, for sealing to another attested node of the same cluster.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.encryption);
        out[32..].copy_from_slice(&self.naming);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<BlobKey> {
        let (encryption, naming) = bytes.split_at_checked(32)?;
        Some(BlobKey {
            encryption: encryption.try_into().ok()?,
            naming: naming.try_into().ok()?,
        })
    }

    pub(crate) fn derive(data_key: &[u8; 32]) -> Self {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, data_key);
        let mut key = BlobKey {
            encryption: [0; 32],
            naming: [0; 32],
        };
        hkdf.expand(b"cella blobs v1", &mut key.encryption)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        hkdf.expand(b"cella blob names v1", &mut key.naming)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }
}

impl std::fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobKey(<redacted>)")
    }
}

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Where under the store's root cella's blobs live.
    prefix: object_store::path::Path,
    key: BlobKey,
}

impl BlobStore {
    /// A blob store in a local directory (created if missing).
    pub fn local(dir: &Path, key: BlobKey) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self::new(
            Arc::new(LocalFileSystem::new_with_prefix(dir)?),
            key,
        ))
    }

    pub fn new(store: Arc<dyn ObjectStore>, key: BlobKey) -> Self {
        BlobStore {
            store,
            prefix: object_store::path::Path::default(),
            key,
        }
    }

    /// The same store, its blobs sealed under `key` (a cluster's nodes share one key).
    pub fn with_key(&self, key: BlobKey) -> Self {
        BlobStore {
            store: self.store.clone(),
            prefix: self.prefix.clone(),
            key,
        }
    }

    /// A blob store named by URL, as object_store parses them (`file:///srv/cella/blobs`,
    /// `memory:///`). The store is untrusted whichever it is: blobs are sealed.
    pub fn from_url(url: &str, key: BlobKey) -> Result<Self, BlobError> {
        let bad = |reason: String| BlobError::Url {
            url: url.to_owned(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() == "file" {
            // object_store's local store needs the directory to exist.
            let dir = parsed
                .to_file_path()
                .map_err(|_| bad("not an absolute file path".into()))?;
            std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
        }
        let (store, prefix) = object_store::parse_url(&parsed).map_err(|e| bad(e.to_string()))?;
        Ok(BlobStore {
            store: Arc::from(store),
            prefix,
            key,
        })
    }

    /// Where the blob of `hash` is kept: a keyed hash of it, so names reveal nothing.
    fn location(&self, hash: &ContentHash) -> object_store::path::Path {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key.naming)
            .expect("HMAC takes keys of any length");
        mac.update(hash.to_hex().as_bytes());
        let name = hex::encode(mac.finalize().into_bytes());
        self.prefix.clone().join("sealed").join(name.as_str())
    }

    fn context(hash: &ContentHash) -> Vec<u8> {
        format!("cella blob v1\0{}", hash.to_hex()).into_bytes()
    }

    /// Seals and stores `bytes` under their hash (idempotent: equal bytes, equal name).
    pub async fn put(&self, bytes: Bytes) -> Result<ContentHash, BlobError> {
        let hash = ContentHash::of(&bytes);
        self.put_as(&hash, &bytes).await?;
        Ok(hash)
    }

    /// Seals and stores `bytes` under `name`, a hash that the caller can check them against
    /// when reading them back (a signed bundle under its bundle hash, say).
    pub async fn put_as(&self, name: &ContentHash, bytes: &[u8]) -> Result<(), BlobError> {
        let sealed = crate::sealed::seal(&self.key.encryption, &Self::context(name), bytes);
        self.store
            .put(&self.location(name), PutPayload::from(sealed))
            .await?;
        Ok(())
    }

    /// Reads the blob stored under `name` and authenticates it: only bytes this platform
    /// sealed under this name come back. The caller checks them against `name`.
    pub async fn get_authenticated(&self, name: &ContentHash) -> Result<Bytes, BlobError> {
        let sealed = match self.store.get(&self.location(name)).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::Missing(*name)),
            Err(e) => return Err(e.into()),
        };
        crate::sealed::open(&self.key.encryption, &Self::context(name), &sealed)
            .map(Bytes::from)
            .map_err(|_| BlobError::Tampered {
                hash: *name,
                detail: "it failed authentication".into(),
            })
    }

    /// Reads the blob named `hash`, authenticates it and checks that it still hashes to it.
    pub async fn get_verified(&self, hash: &ContentHash) -> Result<Bytes, BlobError> {
        let bytes = self.get_authenticated(hash).await?;
        // Authenticated bytes were sealed by this platform for this hash; check anyway, so a
        // bug in sealing can never run other code.
        let actual = ContentHash::of(&bytes);
        if actual != *hash {
            return Err(BlobError::Tampered {
                hash: *hash,
                detail: format!("its bytes hash to {actual}"),
            });
        }
        Ok(bytes)
    }

    pub async fn delete(&self, hash: &ContentHash) -> Result<(), BlobError> {
        match self.store.delete(&self.location(hash)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// What the host sees of the blob named `hash`: for tests that play a malicious storage
    /// host.
    #[doc(hidden)]
    pub async fn raw(&self, hash: &ContentHash) -> Result<Bytes, BlobError> {
        Ok(self.store.get(&self.location(hash)).await?.bytes().await?)
    }

    /// Replaces what the host keeps under `hash`: for tests that play a malicious storage host.
    #[doc(hidden)]
    pub async fn overwrite_raw(&self, hash: &ContentHash, bytes: Bytes) -> Result<(), BlobError> {
        self.store
            .put(&self.location(hash), PutPayload::from(bytes))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> BlobStore {
        BlobStore::local(dir, BlobKey::derive(&[1; 32])).unwrap()
    }

    #[tokio::test]
    async fn blobs_are_sealed_and_every_read_is_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = store(dir.path());
        let code = b"\0asm a tenant's secret algorithm";
        let hash = blobs.put(Bytes::from_static(code)).await.unwrap();
        let other = blobs.put(Bytes::from_static(b"\0asm other")).await.unwrap();
        assert_eq!(&blobs.get_verified(&hash).await.unwrap()[..], code);

        // The host sees neither the code nor its hash.
        let raw = blobs.raw(&hash).await.unwrap();
        assert!(!raw.windows(code.len()).any(|w| w == code));
        for entry in walk(dir.path()) {
            assert!(!entry.contains(&hash.to_hex()), "{entry}");
        }

        // Changed, truncated or swapped bytes are refused.
        let mut flipped = raw.to_vec();
        flipped[40] ^= 1;
        let other_raw = blobs.raw(&other).await.unwrap();
        for bad in [
            Bytes::from(flipped),
            raw.slice(..raw.len() - 1),
            other_raw,
            Bytes::from_static(b"\0asm evil"),
        ] {
            blobs.overwrite_raw(&hash, bad).await.unwrap();
            let err = blobs.get_verified(&hash).await.unwrap_err();
            assert!(matches!(err, BlobError::Tampered { .. }), "{err}");
        }

        // Another platform's key opens nothing.
        blobs.put(Bytes::from_static(code)).await.unwrap();
        let stranger = BlobStore::local(dir.path(), BlobKey::derive(&[2; 32])).unwrap();
        assert!(stranger.get_verified(&hash).await.is_err());

        let never = ContentHash::of(b"never stored");
        assert!(matches!(
            blobs.get_verified(&never).await.unwrap_err(),
            BlobError::Missing(_)
        ));
    }

    #[tokio::test]
    async fn stores_are_named_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/nested/blobs", dir.path().display());
        let blobs = BlobStore::from_url(&url, BlobKey::derive(&[1; 32])).unwrap();
        let hash = blobs.put(Bytes::from_static(b"kept")).await.unwrap();
        assert_eq!(&blobs.get_verified(&hash).await.unwrap()[..], b"kept");
        assert!(!walk(&dir.path().join("nested/blobs")).is_empty());

        let memory = BlobStore::from_url("memory:///", BlobKey::derive(&[1; 32])).unwrap();
        let hash = memory.put(Bytes::from_static(b"held")).await.unwrap();
        assert_eq!(&memory.get_verified(&hash).await.unwrap()[..], b"held");

        for bad in ["ftp://host/x", "not a url", "s3://bucket/cella"] {
            let err = BlobStore::from_url(bad, BlobKey::derive(&[1; 32]))
                .err()
                .unwrap();
            assert!(err.to_string().contains("file:///"), "{bad}: {err}");
        }
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.display().to_string());
            if path.is_dir() {
                out.extend(walk(&path));
            }
        }
        out
    }
}
