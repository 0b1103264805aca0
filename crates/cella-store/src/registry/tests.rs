use super::*;
use cella_core::{ContentHash, EnvName, FunctionKind, FunctionRecord, Limits};

fn tenant(name: &str) -> TenantName {
    TenantName::new(name).unwrap()
}

pub(super) fn sealing_key() -> SealingKey {
    SealingKey {
        key: [42; 32],
        bound_to: "measurement aaaa".into(),
    }
}

pub(super) fn open(path: &Path) -> Result<Registry, RegistryError> {
    Registry::open(path, &sealing_key())
}

/// Plays the host: edits the database file behind the registry's back.
fn edit_raw(path: &Path, edit: impl FnOnce(&mut redb::Table<&'static [u8], &'static [u8]>)) {
    let db = Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut tenants = tx.open_table(TENANTS).unwrap();
        edit(&mut tenants);
    }
    tx.commit().unwrap();
}

/// Plays the host: copies a table's sealed rows as they are on disk now.
fn rows_of(path: &Path, table: Sealed) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = Database::create(path).unwrap();
    let tx = db.begin_read().unwrap();
    raw_entries(&tx.open_table(table).unwrap())
}

fn raw_entries(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    table
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

#[test]
fn tokens_authenticate_rotate_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let (admin, acme_token) = {
        let registry = open(&path).unwrap();
        let admin = registry.ensure_admin_token().unwrap().expect("first start");
        assert!(
            registry.ensure_admin_token().unwrap().is_none(),
            "shown once"
        );
        let (_, token) = registry.create_tenant(&tenant("acme")).unwrap();
        assert!(matches!(
            registry.create_tenant(&tenant("acme")),
            Err(RegistryError::TenantExists(_))
        ));
        (admin, token)
    };
    let registry = open(&path).unwrap();
    assert_eq!(
        registry.authenticate(admin.secret()).unwrap(),
        Some(Principal::Admin)
    );
    assert_eq!(
        registry.authenticate(acme_token.secret()).unwrap(),
        Some(Principal::Tenant(tenant("acme")))
    );
    assert_eq!(registry.authenticate("cella_guess").unwrap(), None);

    let fresh = registry.rotate_tenant_token(&tenant("acme")).unwrap();
    assert_eq!(registry.authenticate(acme_token.secret()).unwrap(), None);
    assert!(registry.authenticate(fresh.secret()).unwrap().is_some());
}

#[test]
fn redeploy_keeps_access_and_check_can_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("r.redb")).unwrap();
    let name = FunctionName::new("f").unwrap();
    let record = |bytes: &[u8]| {
        let version = match bytes {
            b"v1" => "1.0.0",
            b"v2" => "2.0.0",
            _ => "3.0.0",
        };
        function_at("f", "acme", version, bytes)
    };
    registry
        .put_function(record(b"v1"), 16, |_| Ok::<_, ()>(()))
        .unwrap()
        .unwrap();
    registry
        .update_access(&name, |a| {
            a.tenants.insert(tenant("beta"));
        })
        .unwrap();
    let v2 = registry
        .put_function(record(b"v2"), 16, |_| Ok::<_, ()>(()))
        .unwrap()
        .unwrap();
    assert!(v2.access.allows(&tenant("beta")));
    assert_eq!(v2.hash, ContentHash::of(b"v2"));
    assert_eq!(v2.versions.len(), 2, "the history is kept");
    assert_eq!(
        v2.at(&"1.0.0".parse().unwrap()).unwrap().hash,
        ContentHash::of(b"v1")
    );
    assert!(registry.blob_in_use(&ContentHash::of(b"v1")).unwrap());
    let version = registry.version();
    let refused = registry
        .put_function(record(b"v3"), 16, |_| Err("no"))
        .unwrap();
    assert_eq!(refused, Err("no"));
    assert_eq!(
        registry.version(),
        version,
        "a refused write changes nothing"
    );
    assert_eq!(registry.function(&name).unwrap().unwrap().hash, v2.hash);
    // Retention: keeping two versions forgets the oldest, whose code is then unused.
    let v3 = registry
        .put_function(record(b"v3"), 2, |_| Ok::<_, ()>(()))
        .unwrap()
        .unwrap();
    assert_eq!(v3.versions.len(), 2);
    assert_eq!(
        v3.hash,
        ContentHash::of(b"v3"),
        "the current version is always kept"
    );
    assert!(!registry.blob_in_use(&ContentHash::of(b"v1")).unwrap());
    assert!(registry.blob_in_use(&ContentHash::of(b"v2")).unwrap());
    assert!(registry.blob_in_use(&v2.hash).unwrap());
    assert!(registry.delete_function(&name).unwrap().is_some());
    assert!(registry.function(&name).unwrap().is_none());
}

#[test]
fn the_file_holds_no_names_tokens_or_token_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let token = {
        let registry = open(&path).unwrap();
        registry
            .create_tenant(&tenant("secret-tenant-name"))
            .unwrap()
            .1
    };
    let bytes = std::fs::read(&path).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"secret-tenant-name"));
    assert!(!contains(token.secret().as_bytes()));
    assert!(!contains(&token.hash()));
    assert!(!contains(hex::encode(token.hash()).as_bytes()));
}

#[test]
fn a_flipped_truncated_or_swapped_record_is_detected_and_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    {
        let registry = open(&path).unwrap();
        registry.create_tenant(&tenant("acme")).unwrap();
        registry.create_tenant(&tenant("beta")).unwrap();
    }
    let original = std::fs::read(&path).unwrap();
    // Opening checks every record against the digest sealed with the version, so a changed
    // record is refused before anything reads it.
    let refused = |path: &Path| match open(path) {
        Err(RegistryError::Tampered { what }) => what,
        Err(other) => panic!("expected tampering to be detected, got {other}"),
        Ok(_) => panic!("a tampered registry was opened"),
    };
    // A flipped bit in one record.
    edit_raw(&path, |table| {
        let (key, mut value) = raw_entries(table).remove(0);
        *value.last_mut().unwrap() ^= 1;
        table.insert(key.as_slice(), value.as_slice()).unwrap();
    });
    refused(&path);

    // A truncated record.
    std::fs::write(&path, &original).unwrap();
    edit_raw(&path, |table| {
        let (key, value) = raw_entries(table).remove(0);
        table
            .insert(key.as_slice(), &value[..value.len() / 2])
            .unwrap();
    });
    refused(&path);

    // Two records swapped: each is intact but under the other's name.
    std::fs::write(&path, &original).unwrap();
    edit_raw(&path, |table| {
        let entries = raw_entries(table);
        table
            .insert(entries[0].0.as_slice(), entries[1].1.as_slice())
            .unwrap();
        table
            .insert(entries[1].0.as_slice(), entries[0].1.as_slice())
            .unwrap();
    });
    refused(&path);

    let message = open(&path).err().unwrap().to_string();
    assert!(message.contains("failed authentication"), "{message}");
    assert!(message.contains("restore the data directory"), "{message}");
}

#[test]
fn an_older_copy_of_the_registry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let old_copy = dir.path().join("old.redb");
    {
        let registry = open(&path).unwrap();
        registry.create_tenant(&tenant("acme")).unwrap();
        std::fs::copy(&path, &old_copy).unwrap();
        let (_, token) = registry.create_tenant(&tenant("beta")).unwrap();
        registry.rotate_tenant_token(&tenant("beta")).unwrap();
        assert!(registry.authenticate(token.secret()).unwrap().is_none());
        assert_eq!(registry.version(), 3);
    }
    // The host puts the old database back (say, to revive a revoked token).
    std::fs::copy(&old_copy, &path).unwrap();
    match open(&path) {
        Err(RegistryError::RolledBack { found, expected }) => {
            assert!(found < expected, "{found} < {expected}")
        }
        Err(other) => panic!("expected a rollback error, got {other}"),
        Ok(_) => panic!("an older registry was accepted"),
    }
}

#[test]
fn the_version_file_catches_up_after_a_crash_and_cannot_be_forged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let version_file = path.with_extension("version");
    let version = {
        let registry = open(&path).unwrap();
        registry.create_tenant(&tenant("acme")).unwrap();
        registry.version()
    };
    // A crash between the commit and the file write leaves the file behind: accepted.
    std::fs::remove_file(&version_file).unwrap();
    assert_eq!(open(&path).unwrap().version(), version);
    // The file cannot be edited to claim anything.
    let mut bytes = std::fs::read(&version_file).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&version_file, bytes).unwrap();
    assert!(matches!(open(&path), Err(RegistryError::Tampered { .. })));
}

#[test]
fn another_build_cannot_open_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    open(&path).unwrap().create_tenant(&tenant("acme")).unwrap();
    let other = SealingKey {
        key: [43; 32],
        bound_to: "measurement bbbb".into(),
    };
    let error = Registry::open(&path, &other).err().expect("refused");
    assert!(
        matches!(error, RegistryError::SealedForAnotherBuild { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("measurement aaaa") && message.contains("measurement bbbb"));
    // The same claim of binding with the wrong key: a forged or damaged key record.
    let forged = SealingKey {
        key: [43; 32],
        bound_to: "measurement aaaa".into(),
    };
    assert!(matches!(
        Registry::open(&path, &forged),
        Err(RegistryError::Tampered { .. })
    ));
}

#[test]
fn a_registry_from_before_sealing_is_refused_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TableDefinition::<&str, &[u8]>::new("tenants"))
            .unwrap();
        tx.commit().unwrap();
    }
    let error = open(&path).err().expect("refused");
    assert!(matches!(error, RegistryError::Unsealed { .. }));
    assert!(error.to_string().contains("--data-dir"));
}

#[test]
fn keys_are_added_listed_and_revoked_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("registry.redb")).unwrap();
    let acme = tenant("acme");
    registry.add_key(&acme, "ed25519:01", "ed25519:aa").unwrap();
    registry.add_key(&acme, "ed25519:02", "ed25519:bb").unwrap();
    registry
        .add_key(&tenant("beta"), "ed25519:03", "ed25519:cc")
        .unwrap();
    assert!(matches!(
        registry.add_key(&acme, "ed25519:01", "ed25519:aa"),
        Err(RegistryError::KeyExists { revoked: false, .. })
    ));
    let ids: Vec<String> = registry
        .keys(&acme)
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, ["ed25519:01", "ed25519:02"]);
    assert!(registry.key(&acme, "ed25519:03").unwrap().is_none());

    let revoked = registry.revoke_key(&acme, "ed25519:01").unwrap();
    assert!(!revoked.is_active());
    assert!(
        !registry
            .key(&acme, "ed25519:01")
            .unwrap()
            .unwrap()
            .is_active()
    );
    let again = registry
        .add_key(&acme, "ed25519:01", "ed25519:aa")
        .unwrap_err();
    assert!(again.to_string().contains("cannot come back"), "{again}");
    assert!(matches!(
        registry.revoke_key(&acme, "ed25519:09"),
        Err(RegistryError::NoSuchKey(_))
    ));
}

#[test]
fn a_single_record_put_back_from_an_older_copy_or_deleted_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let old_token = {
        let registry = open(&path).unwrap();
        let (_, token) = registry.create_tenant(&tenant("acme")).unwrap();
        token
    };
    // Keep the sealed rows of the tokens table as they are now.
    let old_rows = rows_of(&path, TOKENS);
    {
        let registry = open(&path).unwrap();
        registry.rotate_tenant_token(&tenant("acme")).unwrap();
        assert!(registry.authenticate(old_token.secret()).unwrap().is_none());
    }
    // The host puts the retired token's row back, as it was: the row is authentic on its own.
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut tokens = tx.open_table(TOKENS).unwrap();
            for (k, v) in &old_rows {
                tokens.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let error = open(&path).err().expect("a revived token must be noticed");
    assert!(error.to_string().contains("older copies"), "{error}");

    // Deleting a row (say, the admin token, to make the node mint a new one) is noticed too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    open(&path).unwrap().ensure_admin_token().unwrap();
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().remove(ADMIN_TOKEN).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(open(&path), Err(RegistryError::Tampered { .. })));
}

#[test]
fn function_state_is_bounded_owned_and_rolled_back_copies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let (f, acme, other) = (
        FunctionName::new("f").unwrap(),
        tenant("acme"),
        tenant("other"),
    );
    {
        let registry = open(&path).unwrap();
        assert_eq!(
            registry
                .state_put(&acme, &f, b"k", Some(b"12345"), 10)
                .unwrap(),
            Ok(false)
        );
        assert_eq!(
            registry
                .state_put(&acme, &f, b"k2", Some(b"123456"), 10)
                .unwrap(),
            Err(StateRefusal::Full {
                would_be: 14,
                limit: 10
            }),
            "a write past the limit is refused and nothing is written"
        );
        assert_eq!(registry.state_size(&acme, &f).unwrap(), 6);
        assert_eq!(
            registry.state_get(&acme, &f, b"k").unwrap().as_deref(),
            Some(&b"12345"[..])
        );
        assert_eq!(
            registry.state_get(&other, &f, b"k").unwrap(),
            None,
            "only the owner's"
        );
        let name = EnvName::new("GREETING").unwrap();
        let env = registry
            .update_env_values(&acme, &f, [(name.clone(), Some("hi".to_owned()))].into())
            .unwrap();
        assert_eq!(env[&name], "hi");
        assert!(registry.env_values(&other, &f).unwrap().is_empty());
    }
    // The host keeps this copy of the state, lets the function count on, then puts it back.
    let kept = rows_of(&path, function_data::FUNCTION_DATA);
    {
        let registry = open(&path).unwrap();
        registry
            .state_put(&acme, &f, b"k", Some(b"6"), 10)
            .unwrap()
            .unwrap();
    }
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(function_data::FUNCTION_DATA).unwrap();
            for (k, v) in &kept {
                table.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let error = open(&path)
        .err()
        .expect("a rolled-back state must be noticed");
    assert!(error.to_string().contains("older copies"), "{error}");
}

#[test]
fn deleting_a_function_deletes_what_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("registry.redb")).unwrap();
    let (f, acme) = (FunctionName::new("f").unwrap(), tenant("acme"));
    registry
        .state_put(&acme, &f, b"k", Some(b"v"), 10)
        .unwrap()
        .unwrap();
    let name = EnvName::new("A").unwrap();
    registry
        .update_env_values(&acme, &f, [(name, Some("1".into()))].into())
        .unwrap();
    registry.delete_function(&f).unwrap();
    assert_eq!(registry.state_get(&acme, &f, b"k").unwrap(), None);
    assert!(registry.env_values(&acme, &f).unwrap().is_empty());
}

#[test]
fn finished_invocations_are_pruned_with_their_keys_and_queued_ones_kept() {
    use crate::{AsyncInvocation, AsyncStatus};
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("registry.redb")).unwrap();
    let invocation = |id: &str, key: &str, finished_at: Option<&str>| AsyncInvocation {
        id: id.into(),
        caller: tenant("acme"),
        function: FunctionName::new("f").unwrap(),
        version: "1.0.0".into(),
        status: if finished_at.is_some() {
            AsyncStatus::Succeeded
        } else {
            AsyncStatus::Queued
        },
        attempts: 1,
        submitted_at: "2026-01-01T00:00:00Z".into(),
        finished_at: finished_at.map(str::to_owned),
        idempotency_key: Some(key.into()),
        output_hex: None,
        error: None,
        log: None,
        trigger: None,
        function_owner: None,
        request_sha256: None,
    };
    for (id, key, finished) in [
        ("aa", "old", Some("2026-01-01T00:00:01Z")),
        ("bb", "new", Some("2026-01-03T00:00:00Z")),
        ("cc", "waiting", None),
    ] {
        registry
            .submit_invocation(invocation(id, key, finished))
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        registry.prune_invocations("2026-01-02T00:00:00Z").unwrap(),
        1
    );
    assert!(registry.invocation("aa").unwrap().is_none());
    assert!(registry.invocation("bb").unwrap().is_some());
    assert!(registry.invocation("cc").unwrap().is_some());
    // The pruned one's key is free again; the others' still name them.
    assert!(
        registry
            .submit_invocation(invocation("dd", "old", None))
            .unwrap()
            .is_ok()
    );
    assert!(
        registry
            .submit_invocation(invocation("ee", "new", None))
            .unwrap()
            .is_err()
    );
}

#[test]
fn the_state_hash_kept_by_writes_is_the_hash_of_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let registry = open(&path).unwrap();
    let full = |registry: &Registry| {
        let tx = registry.db.get().unwrap().begin_write().unwrap();
        hash_of(&tx).unwrap().digest()
    };
    registry.ensure_admin_token().unwrap();
    for i in 0..20 {
        registry.create_tenant(&tenant(&format!("t{i}"))).unwrap();
    }
    for i in (0..20).step_by(3) {
        registry
            .rotate_tenant_token(&tenant(&format!("t{i}")))
            .unwrap();
    }
    // The hash each write sealed is the one every row gives, change after change.
    let sealed = || {
        let tx = registry.read().unwrap();
        registry.stored_state(&tx).unwrap().unwrap().1
    };
    assert_eq!(sealed(), full(&registry));
    let kept = registry.state.lock().unwrap().digest();
    assert_eq!(kept, sealed());

    // A node that lost track of the hash (a commit whose end it did not see) hashes every row
    // once and goes on.
    *registry.state.lock().unwrap() = StateHash::empty();
    registry.create_tenant(&tenant("late")).unwrap();
    assert_eq!(sealed(), full(&registry));
    drop(registry);
    // Opening checks every row against it.
    let registry = open(&path).unwrap();
    assert!(registry.tenant(&tenant("late")).unwrap().is_some());
}

/// A new function record of `owner` at `version`, with code `code`.
fn function_at(name: &str, owner: &str, version: &str, code: &[u8]) -> FunctionRecord {
    FunctionRecord::new(
        FunctionName::new(name).unwrap(),
        tenant(owner),
        cella_core::FunctionVersion {
            version: version.parse().unwrap(),
            hash: ContentHash::of(code),
            kind: FunctionKind::WasiCommand,
            size: code.len() as u64,
            limits: Limits::default(),
            signer: "ed25519:01".into(),
            deployed_at: now(),
            plugins: Vec::new(),
            permissions: Default::default(),
        },
    )
}

#[test]
fn lists_come_in_pages_with_cursors_only_this_registry_reads() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("registry.redb")).unwrap();
    for i in 0..25 {
        registry
            .create_tenant(&tenant(&format!("t{i:02}")))
            .unwrap();
    }
    // Pages of ten: every tenant once, sorted within each page, then no cursor.
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = registry.tenants_page(cursor.as_deref(), 10).unwrap();
        assert!(page.items.len() <= 10);
        assert!(page.items.is_sorted_by(|a, b| a.name < b.name));
        seen.extend(page.items.into_iter().map(|t| t.name.to_string()));
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    let all: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    assert_eq!(seen, all);

    // A cursor that is not one, or one of another list, is refused.
    let first = registry.tenants_page(None, 10).unwrap().next.unwrap();
    assert!(matches!(
        registry.tenants_page(Some("00ff"), 10),
        Err(RegistryError::BadCursor)
    ));
    let mut changed = first.clone().into_bytes();
    changed[10] = if changed[10] == b'0' { b'1' } else { b'0' };
    assert!(matches!(
        registry.tenants_page(Some(std::str::from_utf8(&changed).unwrap()), 10),
        Err(RegistryError::BadCursor)
    ));
    assert!(matches!(
        registry.functions_page(&tenant("t00"), Some(&first), 10),
        Err(RegistryError::BadCursor)
    ));
}

#[test]
fn a_tenants_functions_and_a_functions_versions_are_read_by_group() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("registry.redb")).unwrap();
    let keep = |_: Option<&FunctionRecord>| Ok::<_, ()>(());
    for i in 0..30 {
        let owner = if i % 10 == 0 { "small" } else { "large" };
        registry
            .put_function(
                function_at(&format!("f{i:02}"), owner, "1.0.0", b"code"),
                16,
                keep,
            )
            .unwrap()
            .unwrap();
    }
    let small = registry.functions_owned_by(&tenant("small")).unwrap();
    let names: Vec<_> = small.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(names, ["f00", "f10", "f20"]);
    assert_eq!(
        registry.functions_owned_by(&tenant("large")).unwrap().len(),
        27
    );
    assert!(
        registry
            .functions_owned_by(&tenant("nobody"))
            .unwrap()
            .is_empty()
    );

    // Five versions kept of eight deployed: the head holds the current one, each version is
    // read alone, the history is in deploy order, and the stored bytes count the kept ones.
    for (i, version) in [
        "1.1.0", "1.2.0", "2.0.0", "2.1.0", "2.2.0", "3.0.0", "3.1.0",
    ]
    .iter()
    .enumerate()
    {
        let code = vec![b'x'; 10 * (i + 2)];
        registry
            .put_function(function_at("f00", "small", version, &code), 5, keep)
            .unwrap()
            .unwrap();
    }
    let name = FunctionName::new("f00").unwrap();
    let head = registry.function(&name).unwrap().unwrap();
    assert_eq!(head.version.to_string(), "3.1.0");
    assert_eq!(
        head.versions.len(),
        1,
        "the head holds the current version only"
    );
    let history = registry.function_with_history(&name).unwrap().unwrap();
    let versions: Vec<_> = history
        .versions
        .iter()
        .map(|v| v.version.to_string())
        .collect();
    assert_eq!(versions, ["2.0.0", "2.1.0", "2.2.0", "3.0.0", "3.1.0"]);
    let pinned = registry
        .function_version(&name, &"2.1.0".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(pinned.size, 50);
    assert!(
        registry
            .function_version(&name, &"1.0.0".parse().unwrap())
            .unwrap()
            .is_none(),
        "a forgotten version is gone"
    );
    let expected: u64 = 40 + 50 + 60 + 70 + 80 + 4 + 4;
    assert_eq!(
        registry.stored_bytes_of(&tenant("small")).unwrap(),
        expected
    );

    // Deleting takes the versions and the owner's entry with it.
    let removed = registry.delete_function(&name).unwrap().unwrap();
    assert_eq!(removed.versions.len(), 5);
    assert!(
        registry
            .function_version(&name, &"3.1.0".parse().unwrap())
            .unwrap()
            .is_none()
    );
    assert_eq!(
        registry.functions_owned_by(&tenant("small")).unwrap().len(),
        2
    );
    assert!(!registry.blob_in_use(&ContentHash::of(&[b'x'; 80])).unwrap());
    assert!(registry.blob_in_use(&ContentHash::of(b"code")).unwrap());
}

#[test]
fn a_functions_triggers_are_read_removed_and_deleted_with_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("registry.redb")).unwrap();
    let keep = |_: Option<&FunctionRecord>| Ok::<_, ()>(());
    for name in ["f", "g"] {
        registry
            .put_function(function_at(name, "acme", "1.0.0", b"code"), 16, keep)
            .unwrap()
            .unwrap();
    }
    let trigger = |function: &str, id: &str| Trigger {
        id: id.into(),
        owner: tenant("acme"),
        function: FunctionName::new(function).unwrap(),
        subject: "acme.events".into(),
        reply_subject: None,
        public_output: true,
        result_key: None,
        created_at: now(),
    };
    for (function, id) in [("f", "t1"), ("f", "t2"), ("g", "t3")] {
        registry.add_trigger(&trigger(function, id)).unwrap();
    }
    let (f, g) = (
        FunctionName::new("f").unwrap(),
        FunctionName::new("g").unwrap(),
    );
    let ids = |function: &FunctionName| -> Vec<String> {
        registry
            .triggers_of(function)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect()
    };
    assert_eq!(ids(&f), ["t1", "t2"]);
    assert_eq!(ids(&g), ["t3"]);
    assert_eq!(
        registry.triggers().unwrap().len(),
        3,
        "the scheduler sees them all"
    );
    assert!(registry.trigger(&f, "t3").unwrap().is_none(), "t3 is g's");
    assert!(registry.remove_trigger(&f, "t3").unwrap().is_none());
    assert_eq!(registry.remove_trigger(&f, "t1").unwrap().unwrap().id, "t1");
    assert_eq!(ids(&f), ["t2"]);
    registry.delete_function(&f).unwrap();
    assert!(ids(&f).is_empty());
    assert_eq!(ids(&g), ["t3"], "another function's triggers stay");
}

#[test]
fn a_registry_of_the_earlier_format_is_refused_as_such_not_as_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    {
        // A registry as format 1 sealed it: the same rows, the version sealed with the SHA-256
        // of every row.
        let registry = open(&path).unwrap();
        registry.create_tenant(&tenant("acme")).unwrap();
        let tx = registry.db.get().unwrap().begin_write().unwrap();
        let mut rows = Vec::new();
        visit_rows(
            &tx.open_table(META).unwrap(),
            SEALED_TABLES.map(|t| (t, tx.open_table(t))),
            |table, key, value| rows.push((table.to_owned(), key.to_vec(), value.to_vec())),
        )
        .unwrap();
        let digest = format_1_digest(rows.iter().map(|(t, k, v)| (t.as_str(), &k[..], &v[..])));
        let sealed = registry.sealer.seal(
            META.name(),
            VERSION.as_bytes(),
            &version::encode(registry.version(), &digest),
        );
        tx.open_table(META)
            .unwrap()
            .insert(VERSION, sealed.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let error = open(&path).err().expect("an earlier format is not opened");
    assert!(matches!(error, RegistryError::OlderFormat), "{error}");
    assert!(error.to_string().contains("another --data-dir"), "{error}");
}

#[test]
fn a_record_put_back_while_the_node_runs_is_caught_by_the_check_of_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(&dir.path().join("registry.redb")).unwrap();
    let (_, old_token) = registry.create_tenant(&tenant("acme")).unwrap();
    let old_rows = {
        let tx = registry.db.get().unwrap().begin_read().unwrap();
        raw_entries(&tx.open_table(TOKENS).unwrap())
    };
    registry.rotate_tenant_token(&tenant("acme")).unwrap();
    registry.verify_state().unwrap();

    // The host puts the retired token's row back behind the registry's back (here through its
    // own handle on the file, as redb's lock keeps others out).
    {
        let tx = registry.db.get().unwrap().begin_write().unwrap();
        {
            let mut tokens = tx.open_table(TOKENS).unwrap();
            for (k, v) in &old_rows {
                tokens.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    // Reads check seals only: the revived token would work until the check runs.
    assert!(registry.authenticate(old_token.secret()).unwrap().is_some());
    assert!(matches!(
        registry.verify_state(),
        Err(RegistryError::Tampered { .. })
    ));
    // From then on nothing is read or written, and health says why.
    assert!(matches!(
        registry.authenticate(old_token.secret()),
        Err(RegistryError::Tampered { .. })
    ));
    assert!(matches!(
        registry.create_tenant(&tenant("beta")),
        Err(RegistryError::Tampered { .. })
    ));
    assert!(registry.health().unwrap_err().contains("periodic check"));
}
