//! The registry's version counter, kept sealed in two places: inside the database (bumped in
//! the same transaction as every change) and in a small file beside it (written after each
//! commit). Restoring an older copy of the database alone leaves it behind the file, which is
//! detected at start-up; a running node also remembers the highest version it has seen and
//! refuses a database that falls behind it. Restoring the database *and* the file together is
//! not detectable on the node (there is no trusted monotonic counter here); clients notice it
//! because every response carries the version (see ARCHITECTURE.md).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sealed::{self, Unauthentic};

const FILE_CONTEXT: &[u8] = b"cella registry version file v1";

/// The sealed version file beside the database.
pub(crate) struct VersionFile {
    path: PathBuf,
    key: [u8; 32],
    /// The highest version written to the file, so concurrent writers never lower it.
    written: Mutex<u64>,
}

impl VersionFile {
    pub(crate) fn beside(database: &Path, key: [u8; 32]) -> Self {
        VersionFile {
            path: database.with_extension("version"),
            key,
            written: Mutex::new(0),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The version in the file; `None` when there is no file yet.
    pub(crate) fn read(&self) -> std::io::Result<Option<Result<u64, Unauthentic>>> {
        let sealed = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(
            sealed::open(&self.key, FILE_CONTEXT, &sealed).and_then(|plain| {
                let bytes: [u8; 8] = plain.try_into().map_err(|_| Unauthentic)?;
                Ok(u64::from_le_bytes(bytes))
            }),
        ))
    }

    /// Removes the file (a registry that never had a version and takes another data key).
    pub(crate) fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Records `version` unless a higher one is already recorded. Written to a temporary file
    /// and renamed, so a crash leaves the old or the new file, never half of one.
    pub(crate) fn record(&self, version: u64) -> std::io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if version <= *written {
            return Ok(());
        }
        let sealed = sealed::seal(&self.key, FILE_CONTEXT, &version.to_le_bytes());
        let temporary = self.path.with_extension("version.tmp");
        let replaced = (|| {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&sealed)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)
        })();
        if replaced.is_err() {
            // A full disk leaves an empty or partial temporary file: never leave it behind.
            let _ = std::fs::remove_file(&temporary);
        }
        replaced?;
        *written = version;
        Ok(())
    }
}

/// Encodes the version record for the database: the version and the digest of the records
/// it covers (sealed there like every other record).
pub(crate) fn encode(version: u64, digest: &[u8; 32]) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&version.to_le_bytes());
    out[8..].copy_from_slice(digest);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<(u64, [u8; 32]), Unauthentic> {
    let bytes: [u8; 40] = bytes.try_into().map_err(|_| Unauthentic)?;
    let version = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    Ok((version, bytes[8..].try_into().expect("32 bytes")))
}
