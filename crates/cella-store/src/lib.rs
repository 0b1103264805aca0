//! Where cella keeps things: function bytes in a blob store (object_store; a local directory by
//! default) and metadata — tenants, token hashes, functions, grants — in an embedded registry
//! (redb). Both live outside the trust boundary: blobs are re-hashed on every read, and every
//! registry record is sealed (encrypted and authenticated by the TEE, under a version that only
//! moves forward).
#![forbid(unsafe_code)]

mod blobs;
#[cfg(feature = "lying-host")]
pub mod lying;
mod registry;
mod sealed;
mod token;
mod version;

pub use blobs::{BlobError, BlobKey, BlobStore};
pub use object_store::ObjectStore;
pub use registry::{
    AsyncError, AsyncInvocation, AsyncStatus, ClusterSecrets, Finish, Finished, MAX_PAGE, Page,
    REGISTRY_CACHE_BYTES, Registry, RegistryError, RegistryKey, SharedError, SharedLog, Sharing,
    StateRead, StateRefusal, StateWrite, Tenant, TenantKey, Trigger, VERIFY_INTERVAL, value_sha256,
};
pub use sealed::SealingKey;
pub use token::{Principal, Token};
