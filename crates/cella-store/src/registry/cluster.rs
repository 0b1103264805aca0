//! The secrets a cluster's nodes share, kept by its gateways (whose shared registry holds
//! them): the bus key of the current epoch, which seals every message between attested nodes,
//! and the blob key, which seals the bundles all of them read from the shared blob store. Both
//! are derived from the registry's data key, which leaves a gateway only sealed to another
//! attested gateway: a worker is handed the derived keys only, so it can read bundles and
//! messages but not the registry. Rotation moves the epoch forward; a node that is not admitted again cannot derive
//! the next bus key. The blob key does not rotate: bundles sealed under it stay readable by
//! every node that was ever admitted (re-sealing the store is not built).

use hkdf::Hkdf;
use redb::{ReadableTable, TableHandle};
use sha2::Sha256;

use super::{META, Registry, RegistryError, db, tampered};
use crate::BlobKey;

pub(super) const CLUSTER_EPOCH: &str = "cluster_epoch";

/// What an admitted node receives, and what the founder seals messages with.
#[derive(Clone)]
pub struct ClusterSecrets {
    /// Which bus key this is; a message names the epoch it is sealed under.
    pub epoch: u32,
    /// The bus key of `epoch`.
    pub bus: [u8; 32],
    /// Seals the bundles in the shared blob store.
    pub blobs: BlobKey,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecrets(epoch {}, <redacted>)", self.epoch)
    }
}

/// Length of [`ClusterSecrets::to_bytes`].
const ENCODED_LEN: usize = 4 + 32 + BlobKey::ENCODED_LEN;

impl ClusterSecrets {
    /// The wire form, for sealing to an admitted node's key (never stored or sent in clear).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.bus);
        out.extend_from_slice(&self.blobs.to_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<ClusterSecrets> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let (epoch, rest) = bytes.split_at(4);
        let (bus, blobs) = rest.split_at(32);
        Some(ClusterSecrets {
            epoch: u32::from_le_bytes(epoch.try_into().ok()?),
            bus: bus.try_into().ok()?,
            blobs: BlobKey::from_bytes(blobs)?,
        })
    }
}

/// The cluster root: the registry's data key, expanded for this one purpose.
pub(super) fn cluster_root(data_key: &[u8; 32]) -> [u8; 32] {
    let mut root = [0u8; 32];
    Hkdf::<Sha256>::new(None, data_key)
        .expand(b"cella cluster root v1", &mut root)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    root
}

impl Registry {
    /// The cluster's current epoch (1 until the first rotation).
    pub fn cluster_epoch(&self) -> Result<u32, RegistryError> {
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(db)?;
        let stored = meta.get(CLUSTER_EPOCH).map_err(db)?;
        match stored {
            None => Ok(1),
            Some(sealed) => self.open_epoch(sealed.value()),
        }
    }

    fn open_epoch(&self, sealed: &[u8]) -> Result<u32, RegistryError> {
        let plain = self
            .sealer
            .open(META.name(), CLUSTER_EPOCH.as_bytes(), sealed)
            .map_err(tampered("the cluster epoch"))?;
        let bytes: [u8; 4] = plain.try_into().map_err(|_| RegistryError::Tampered {
            what: "the cluster epoch".into(),
        })?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// Moves the cluster to the next epoch and returns it: every older bus key is retired.
    pub fn rotate_cluster(&self) -> Result<u32, RegistryError> {
        self.write(|tx| {
            let meta = tx.open_table(META).map_err(db)?;
            let current = match meta.get(CLUSTER_EPOCH).map_err(db)? {
                None => 1,
                Some(sealed) => self.open_epoch(sealed.value())?,
            };
            let next = current
                .checked_add(1)
                .ok_or_else(|| RegistryError::Tampered {
                    what: "the cluster epoch (at its maximum)".into(),
                })?;
            drop(meta);
            self.insert_shared_meta(tx, CLUSTER_EPOCH, &next.to_le_bytes())?;
            Ok(next)
        })
    }

    /// The secrets of the current epoch.
    pub fn cluster_secrets(&self) -> Result<ClusterSecrets, RegistryError> {
        let epoch = self.cluster_epoch()?;
        let mut bus = [0u8; 32];
        let mut info = b"cella cluster bus key v1\0".to_vec();
        info.extend_from_slice(&epoch.to_le_bytes());
        Hkdf::<Sha256>::from_prk(&self.cluster_root)
            .expect("32 bytes is a valid HKDF-SHA256 pseudorandom key")
            .expand(&info, &mut bus)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Ok(ClusterSecrets {
            epoch,
            bus,
            blobs: self.blob_key(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_survive_their_wire_form_and_rotation_changes_the_bus_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let registry = super::super::tests::open(&dir.path().join("registry.redb")).unwrap();
        let first = registry.cluster_secrets().unwrap();
        assert_eq!(first.epoch, 1);
        let decoded = ClusterSecrets::from_bytes(&first.to_bytes()).unwrap();
        assert_eq!(decoded.bus, first.bus);
        assert_eq!(decoded.blobs.to_bytes(), first.blobs.to_bytes());
        assert!(ClusterSecrets::from_bytes(&first.to_bytes()[1..]).is_none());

        assert_eq!(registry.rotate_cluster().unwrap(), 2);
        let second = registry.cluster_secrets().unwrap();
        assert_eq!(second.epoch, 2);
        assert_ne!(second.bus, first.bus);
        // Bundles stay readable across rotations.
        assert_eq!(second.blobs.to_bytes(), first.blobs.to_bytes());
    }
}
