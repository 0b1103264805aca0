//! A registry on a disk that fills up: writes fail with "no space left" while it is full,
//! and the registry must recover by itself once space returns, never lose a committed
//! change, and never keep failing until a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::StorageBackend;
use redb::backends::InMemoryBackend;

use super::tests::sealing_key;
use super::*;

/// A disk whose writes fail with ENOSPC while `full` is set. Its bytes outlive every
/// database opened on it, as a file's do.
#[derive(Debug, Clone)]
struct FillingDisk {
    bytes: Arc<InMemoryBackend>,
    full: Arc<AtomicBool>,
}

impl FillingDisk {
    fn refuse(&self) -> Result<(), std::io::Error> {
        if self.full.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

impl StorageBackend for FillingDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.bytes.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.bytes.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.refuse()?;
        self.bytes.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.refuse()?;
        self.bytes.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.refuse()?;
        self.bytes.write(offset, data)
    }
}

fn on_filling_disk(dir: &Path) -> (Registry, Arc<AtomicBool>) {
    let disk = FillingDisk {
        bytes: Arc::new(InMemoryBackend::new()),
        full: Arc::new(AtomicBool::new(false)),
    };
    let full = disk.full.clone();
    let open = Box::new(move || redb::Builder::new().create_with_backend(disk.clone()));
    let registry =
        Registry::open_on(&dir.join("registry.redb"), &sealing_key(), None, open).unwrap();
    (registry, full)
}

#[test]
fn a_registry_on_a_full_disk_refuses_writes_then_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, full) = on_filling_disk(dir.path());
    let (_, kept) = registry
        .create_tenant(&TenantName::new("kept").unwrap())
        .unwrap();
    let before = registry.version();
    assert_eq!(registry.health(), Ok(()));

    full.store(true, Ordering::SeqCst);
    for attempt in 0..3 {
        let refused = registry
            .create_tenant(&TenantName::new(format!("lost-{attempt}")).unwrap())
            .unwrap_err();
        assert!(
            matches!(
                refused,
                RegistryError::Storage { .. } | RegistryError::Database(_)
            ),
            "{refused:?}"
        );
        if let RegistryError::Storage { .. } = refused {
            assert!(
                refused.to_string().contains("file system is full"),
                "{refused}"
            );
        }
    }
    let unhealthy = registry.health().unwrap_err();
    assert!(unhealthy.contains("file system is full"), "{unhealthy}");
    assert!(
        !unhealthy.contains('/'),
        "no paths for anyone who asks: {unhealthy}"
    );
    assert_eq!(registry.version(), before, "nothing was committed");

    // Space returns: the next health check (or request) opens the database again, with
    // nothing lost and no restart.
    full.store(false, Ordering::SeqCst);
    assert_eq!(registry.health(), Ok(()));
    assert!(
        registry.authenticate(kept.secret()).unwrap().is_some(),
        "what was committed before is intact"
    );
    registry
        .create_tenant(&TenantName::new("after").unwrap())
        .unwrap();
    assert_eq!(registry.version(), before + 1);
    let mut names: Vec<String> = registry
        .tenants()
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["after", "kept"]);
}

#[test]
fn a_request_recovers_the_registry_without_a_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, full) = on_filling_disk(dir.path());
    full.store(true, Ordering::SeqCst);
    registry
        .create_tenant(&TenantName::new("lost").unwrap())
        .unwrap_err();
    full.store(false, Ordering::SeqCst);
    registry
        .create_tenant(&TenantName::new("made").unwrap())
        .unwrap();
    assert_eq!(registry.health(), Ok(()));
}

#[test]
fn a_version_file_that_cannot_be_written_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let file = crate::version::VersionFile::beside(&dir.path().join("registry.redb"), [1; 32]);
    // A directory where the file would go makes the rename fail after the temporary file
    // was written, as a full disk makes the write fail.
    std::fs::create_dir(dir.path().join("registry.version")).unwrap();
    assert!(file.record(1).is_err());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
