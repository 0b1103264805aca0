//! Precompiled code, so compilation is never on the invocation path after deploy — not even
//! after a restart. At deploy (and after any compilation) the native code is serialized in
//! wasmtime's precompiled form and sealed into the data directory's `compiled/` store under a
//! name derived from the bundle hash and the engine's fingerprint; a cache miss loads it from
//! there (authenticated first: native code is trusted by the engine) and falls back to
//! verifying and compiling the bundle if it is missing, stale or fails authentication.

use cella_core::{ContentHash, FunctionRecord};
use cella_sandbox::Compiled;
use cella_store::BlobError;

use crate::platform::{Platform, blocking};

impl Platform {
    /// The name precompiled code for `bundle` is sealed under: distinct from the bundle's own
    /// name, and from code made by another engine or cella version.
    fn artifact_name(&self, bundle: &ContentHash) -> ContentHash {
        let mut input = b"cella compiled v1\0".to_vec();
        input.extend_from_slice(bundle.as_bytes());
        input.extend_from_slice(&self.sandbox().engine_fingerprint().to_le_bytes());
        input.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        ContentHash::of(&input)
    }

    /// Seals `compiled`'s native code for later loads. A failure only costs a compilation
    /// later, so it is logged, not returned.
    pub(crate) async fn keep_precompiled(&self, bundle: &ContentHash, compiled: &Compiled) {
        let compiled = compiled.clone();
        let serialized = blocking(move || Ok(compiled.precompiled()?)).await;
        let stored = match serialized {
            Ok(bytes) => self
                .artifacts()
                .put_as(&self.artifact_name(bundle), &bytes)
                .await
                .map_err(Into::into),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            tracing::warn!(%bundle, "cannot keep precompiled code: {e}");
        }
    }

    /// The precompiled code of `record`, if it is there and authentic.
    pub(crate) async fn load_precompiled(&self, record: &FunctionRecord) -> Option<Compiled> {
        let bytes = match self
            .artifacts()
            .get_authenticated(&self.artifact_name(&record.hash))
            .await
        {
            Ok(bytes) => bytes,
            Err(BlobError::Missing(_)) => return None,
            Err(e) => {
                // Never loaded: the bundle is verified and compiled instead.
                if matches!(e, BlobError::Tampered { .. }) {
                    self.metrics().integrity_failure();
                }
                tracing::warn!(function = %record.name, "precompiled code refused: {e}");
                return None;
            }
        };
        let sandbox = self.sandbox().clone();
        let kind = record.kind;
        match blocking(move || Ok(sandbox.load_precompiled(kind, &bytes)?)).await {
            Ok(compiled) => {
                self.metrics().precompiled_load();
                Some(compiled)
            }
            Err(e) => {
                tracing::info!(function = %record.name, "precompiled code not usable ({e}); compiling");
                None
            }
        }
    }

    pub(crate) async fn forget_precompiled(&self, bundle: &ContentHash) {
        if let Err(e) = self.artifacts().delete(&self.artifact_name(bundle)).await {
            tracing::warn!(%bundle, "cannot delete precompiled code: {e}");
        }
    }
}
