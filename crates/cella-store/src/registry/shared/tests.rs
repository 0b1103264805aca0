use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::registry::tests::open;
use crate::sealed::SealingKey;
use crate::token::Principal;
use cella_core::TenantName;

/// The log as a cluster's storage keeps it: a genesis replaced by compare-and-set, and
/// create-if-never-written slots (`None`: forgotten, still taken).
#[derive(Default)]
struct MemoryLog {
    genesis: Mutex<Option<(Vec<u8>, u64)>>,
    base: Mutex<u64>,
    entries: Mutex<BTreeMap<u64, Option<Vec<u8>>>>,
}

impl SharedLog for MemoryLog {
    fn genesis(&self) -> Result<Option<(Vec<u8>, u64)>, SharedError> {
        Ok(self.genesis.lock().unwrap().clone())
    }

    fn found(&self, genesis: Vec<u8>, base: u64) -> Result<bool, SharedError> {
        self.replace_genesis(genesis, base, 0)
    }

    fn replace_genesis(
        &self,
        genesis: Vec<u8>,
        base: u64,
        revision: u64,
    ) -> Result<bool, SharedError> {
        let mut slot = self.genesis.lock().unwrap();
        let current = slot.as_ref().map_or(0, |(_, revision)| *revision);
        if current != revision {
            return Ok(false);
        }
        *slot = Some((genesis, revision + 1));
        *self.base.lock().unwrap() = base;
        Ok(true)
    }

    fn base(&self) -> Result<u64, SharedError> {
        Ok(*self.base.lock().unwrap())
    }

    fn append(&self, version: u64, entry: Vec<u8>) -> Result<bool, SharedError> {
        let mut entries = self.entries.lock().unwrap();
        if entries.contains_key(&version) {
            return Ok(false);
        }
        entries.insert(version, Some(entry));
        Ok(true)
    }

    fn entry(&self, version: u64) -> Result<Option<Vec<u8>>, SharedError> {
        Ok(self
            .entries
            .lock()
            .unwrap()
            .get(&version)
            .cloned()
            .flatten())
    }

    fn forget(&self, version: u64) -> Result<(), SharedError> {
        self.entries.lock().unwrap().insert(version, None);
        Ok(())
    }
}

fn tenant(name: &str) -> TenantName {
    TenantName::new(name).unwrap()
}

/// A second gateway's copy: its own directory and sealing key, the cluster's data key.
fn member(dir: &std::path::Path, key: &RegistryKey) -> Registry {
    Registry::open_with_key(&dir.join("registry.redb"), &member_sealing(), Some(key)).unwrap()
}

fn member_sealing() -> SealingKey {
    SealingKey {
        key: [9; 32],
        bound_to: "another gateway".into(),
    }
}

fn digest(registry: &Registry) -> [u8; 32] {
    let tx = registry.read().unwrap();
    registry.stored_state(&tx).unwrap().unwrap().1
}

#[test]
fn gateways_sharing_a_log_see_each_others_writes_and_never_lose_one() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(&a_dir.path().join("registry.redb")).unwrap();
    a.ensure_admin_token().unwrap().unwrap();
    a.create_tenant(&tenant("acme")).unwrap();
    let log: Arc<MemoryLog> = Arc::default();
    assert_eq!(
        a.share(log.clone()).unwrap(),
        Sharing::Founded { version: 2 }
    );

    // A fresh copy takes the genesis and every entry after it.
    a.create_tenant(&tenant("beta")).unwrap();
    let b = member(b_dir.path(), &a.shared_key());
    assert_eq!(
        b.share(log.clone()).unwrap(),
        Sharing::Joined { from: 0, to: 3 }
    );
    assert_eq!(b.tenants().unwrap().len(), 2);
    assert!(
        b.ensure_admin_token().unwrap().is_none(),
        "the cluster has one admin token"
    );

    // A token or a function unknown on one copy is looked for again after catching up: a
    // tenant made on the other gateway a moment ago is known at once.
    let (_, zeta) = a.create_tenant(&tenant("zeta")).unwrap();
    assert_eq!(
        b.authenticate(zeta.secret()).unwrap(),
        Some(Principal::Tenant(tenant("zeta")))
    );
    assert!(b.authenticate("cella_not_a_token").unwrap().is_none());

    // Each writes without having seen the other's latest: the loser applies the winner's
    // entry and writes after it, so both changes land and the copies agree.
    b.create_tenant(&tenant("gamma")).unwrap();
    let mut watched = a.watch_applied();
    a.create_tenant(&tenant("delta")).unwrap();
    assert_eq!(*watched.borrow_and_update(), 5, "A applied B's entry first");
    assert_eq!(b.catch_up().unwrap(), 1);
    assert_eq!((a.version(), b.version()), (6, 6));
    assert_eq!(digest(&a), digest(&b));
    let names = |r: &Registry| {
        r.tenants()
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), ["acme", "beta", "delta", "gamma", "zeta"]);
    assert_eq!(names(&a), names(&b));

    // A rotation on one gateway is the cluster's.
    assert_eq!(a.rotate_cluster().unwrap(), 2);
    b.catch_up().unwrap();
    assert_eq!(
        b.cluster_secrets().unwrap().bus,
        a.cluster_secrets().unwrap().bus
    );

    // A copy restarted later checks it is a state the log went through, then catches up.
    drop(b);
    a.create_tenant(&tenant("epsilon")).unwrap();
    let b = member(b_dir.path(), &a.shared_key());
    assert_eq!(b.share(log).unwrap(), Sharing::Joined { from: 7, to: 8 });
    assert_eq!(digest(&a), digest(&b));
}

#[test]
fn a_changed_replayed_or_foreign_log_entry_is_never_applied() {
    let (a_dir, b_dir, c_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = open(&a_dir.path().join("registry.redb")).unwrap();
    let log: Arc<MemoryLog> = Arc::default();
    a.share(log.clone()).unwrap();
    a.create_tenant(&tenant("acme")).unwrap();
    a.create_tenant(&tenant("beta")).unwrap();
    let good = log.entries.lock().unwrap().clone();

    // A flipped byte: refused, and the copy stays where it was.
    let mut flipped = good[&2].clone().unwrap();
    flipped[10] ^= 1;
    log.entries.lock().unwrap().insert(2, Some(flipped));
    let b = member(b_dir.path(), &a.shared_key());
    let refused = b.share(log.clone()).unwrap_err();
    assert!(
        matches!(refused, RegistryError::Tampered { .. }),
        "{refused}"
    );
    assert_eq!(b.version(), 1);
    assert!(b.tenant(&tenant("beta")).unwrap().is_none());

    // Version 1's entry replayed as version 2: sealed for its own version only.
    log.entries.lock().unwrap().insert(2, good[&1].clone());
    assert!(matches!(b.catch_up(), Err(RegistryError::Tampered { .. })));
    log.entries.lock().unwrap().insert(2, good[&2].clone());
    assert_eq!(b.catch_up().unwrap(), 1);
    assert_eq!(digest(&a), digest(&b));

    // A registry under another data key cannot read the log, nor join it.
    let c = open(&c_dir.path().join("registry.redb")).unwrap();
    assert!(matches!(
        c.share(log.clone()),
        Err(RegistryError::Shared(SharedError::OtherCluster))
    ));
}

#[test]
fn a_copy_that_wrote_on_its_own_is_refused_by_the_log() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(&a_dir.path().join("registry.redb")).unwrap();
    let log: Arc<MemoryLog> = Arc::default();
    a.share(log.clone()).unwrap();
    a.create_tenant(&tenant("acme")).unwrap();
    let b = member(b_dir.path(), &a.shared_key());
    b.share(log.clone()).unwrap();
    drop(b);

    // B, started without the cluster, writes version 2 on its own; A writes another.
    let b = member(b_dir.path(), &a.shared_key());
    b.create_tenant(&tenant("rogue")).unwrap();
    a.create_tenant(&tenant("beta")).unwrap();
    assert!(matches!(
        b.share(log),
        Err(RegistryError::Shared(SharedError::Forked { version: 2 }))
    ));
}

#[test]
fn rows_survive_their_encoding_and_lies_about_lengths_are_refused() {
    let rows = vec![
        Row {
            table: "t".into(),
            key: vec![1, 2],
            value: Some(vec![3; 40]),
        },
        Row {
            table: "u".into(),
            key: vec![],
            value: None,
        },
    ];
    let mut bytes = [7u8; 32].to_vec();
    encode_rows(&mut bytes, &rows);
    assert_eq!(decode_entry(&bytes), Some(([7; 32], rows)));
    for cut in 0..bytes.len() {
        assert_eq!(decode_entry(&bytes[..cut]), None, "cut at {cut}");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(decode_entry(&trailing), None);
    let mut huge = [7u8; 32].to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(decode_entry(&huge), None);
}

#[test]
fn a_registry_never_written_takes_the_clusters_key_and_one_written_does_not() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(&a_dir.path().join("registry.redb")).unwrap();
    a.create_tenant(&tenant("acme")).unwrap();
    // Started once on its own (a key of its own made, nothing written), then admitted.
    drop(Registry::open(&b_dir.path().join("registry.redb"), &member_sealing()).unwrap());
    let b = member(b_dir.path(), &a.shared_key());
    let log: Arc<MemoryLog> = Arc::default();
    a.share(log.clone()).unwrap();
    b.share(log).unwrap();
    assert!(b.tenant(&tenant("acme")).unwrap().is_some());
    drop(b);

    // A registry that holds anything keeps its key: it is not the cluster's.
    let c = open(&a_dir.path().join("other.redb")).unwrap();
    c.create_tenant(&tenant("beta")).unwrap();
    drop(c);
    let sealing = crate::registry::tests::sealing_key();
    let refused = Registry::open_with_key(
        &a_dir.path().join("other.redb"),
        &sealing,
        Some(&a.shared_key()),
    );
    assert!(matches!(
        refused,
        Err(RegistryError::Shared(SharedError::OtherCluster))
    ));
}

#[test]
fn a_compacted_log_still_brings_every_copy_to_the_same_state() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = open(&dirs[0].path().join("registry.redb")).unwrap();
    let log: Arc<MemoryLog> = Arc::default();
    a.share(log.clone()).unwrap();
    let b = member(dirs[1].path(), &a.shared_key());
    b.share(log.clone()).unwrap();
    for n in 0..6 {
        a.create_tenant(&tenant(&format!("t{n}"))).unwrap();
    }
    b.catch_up().unwrap();
    // B goes away at version 6; A writes on and compacts.
    drop(b);
    for n in 6..10 {
        a.create_tenant(&tenant(&format!("t{n}"))).unwrap();
    }
    assert_eq!(a.compact(100).unwrap(), None, "too few entries yet");
    assert_eq!(a.compact(5).unwrap(), Some(10));
    assert_eq!(a.compact(5).unwrap(), None, "nothing new since");
    assert!(log.entries.lock().unwrap().values().all(Option::is_none));
    a.create_tenant(&tenant("t10")).unwrap();

    // A copy from before the compaction takes the genesis, then the entries after it.
    let b = member(dirs[1].path(), &a.shared_key());
    assert_eq!(
        b.share(log.clone()).unwrap(),
        Sharing::Joined { from: 6, to: 11 }
    );
    assert_eq!(digest(&a), digest(&b));
    // So does a fresh one.
    let c = member(dirs[2].path(), &a.shared_key());
    assert_eq!(
        c.share(log.clone()).unwrap(),
        Sharing::Joined { from: 0, to: 11 }
    );
    assert_eq!(c.tenants().unwrap().len(), 11);

    // A copy left behind while running: its next write finds its slot forgotten (taken for
    // good), takes the genesis, and lands after it.
    for n in 11..16 {
        a.create_tenant(&tenant(&format!("t{n}"))).unwrap();
    }
    assert_eq!(a.compact(5).unwrap(), Some(16));
    assert_eq!(c.version(), 11);
    c.create_tenant(&tenant("late")).unwrap();
    assert_eq!(c.version(), 17);
    a.catch_up().unwrap();
    assert_eq!(digest(&a), digest(&c));
    // And one that only reads catches up in full from the hint.
    assert_eq!(b.version(), 11);
    assert_eq!(b.catch_up().unwrap(), 0, "its next entry is forgotten");
    assert_eq!(b.catch_up_fully().unwrap(), 2);
    assert_eq!(digest(&a), digest(&b));
}
