//! Deploying signed bundles, and the keys tenants sign them with. A bundle is accepted only if
//! its signature verifies under a key its owner has registered and not revoked, it names the
//! function it is deployed as, its version is newer than the current one, and its payload
//! compiles to the kind it declares. It is kept (sealed) in the untrusted blob store under its
//! bundle hash and verified again — signature and hash — whenever it is loaded.

use bytes::Bytes;
use cella_bundle::{Bundle, BundleKind, VerifyingKey};
use cella_core::{
    ContentHash, FunctionKind, FunctionName, FunctionRecord, FunctionVersion, Limits, Permission,
    Permissions, Plugin, PluginUse,
};
use cella_sandbox::Compiled;
use cella_store::{BlobError, Principal, TenantKey};

use crate::RuntimeError;
use crate::platform::{Platform, blocking, taken, tenant_of};

impl Platform {
    /// Verifies, compiles, stores and registers a signed bundle as the new current version of
    /// function `name`. Compilation happens here, not on the first invocation.
    pub async fn deploy(
        &self,
        caller: &Principal,
        name: &str,
        bundle_bytes: Bytes,
    ) -> Result<FunctionRecord, RuntimeError> {
        let owner = tenant_of(caller)?.clone();
        let name = FunctionName::new(name)?;
        let bundle = Bundle::decode(&bundle_bytes, self.config().max_bundle_bytes)?;
        if bundle.manifest.name != name {
            return Err(RuntimeError::Invalid(format!(
                "the bundle is for function `{}`, not `{name}`; deploy it as `{}` or rebuild it \
                 with `name = \"{name}\"` in its manifest",
                bundle.manifest.name, bundle.manifest.name
            )));
        }
        let signer = bundle.verify_signature()?;
        self.require_active_key(&owner, &signer)?;
        let kind = supported_kind(&bundle)?;
        let permissions = bundle.manifest.permissions.clone();
        permissions
            .validate()
            .map_err(|e| RuntimeError::Invalid(format!("[permissions] in the manifest: {e}")))?;
        let limits = Limits::resolve(
            &self.config().default_limits,
            &bundle.manifest.limits,
            &self.config().max_limits,
        )?;
        // With its history: the quota counts what retention forgets of it.
        let before = self.registry().function_with_history(&name)?;
        if let Some(existing) = &before
            && existing.owner != owner
        {
            return Err(taken(&name));
        }
        self.check_storage_quota(&owner, before.as_ref(), bundle.payload.len() as u64)?;
        let hash = bundle.hash().0;
        let plugins: Vec<PluginUse> = self
            .resolve_plugins(&bundle.manifest.plugins)?
            .iter()
            .map(Plugin::used)
            .collect();
        if plugins.is_empty() {
            // Read the binary's shape before compiling: one too large to compile, lacking a
            // permission or needing more memory than its limit is refused without cost.
            let shape = self.sandbox().preflight(&bundle.payload)?;
            check_shape(&name, kind, &limits, &shape)?;
            check_permissions(&name, kind, &permissions, shape.needed_permissions)?;
        }
        // Making an image from a plug-in runs the tenant's code in an instance: it counts
        // against the same limits as an invocation.
        let _slot = match plugins.is_empty() {
            true => None,
            false => Some(self.concurrency().acquire(caller)?),
        };
        // The tenant's turn at the compiler: one deploy of its compiling at a time, within
        // its compile time on this node.
        let turn = self.compile_budget().admit(&owner)?;
        let compiled = self
            .build(
                &name,
                kind,
                &plugins,
                &limits,
                Bytes::from(bundle.payload.clone()),
                Some(&turn),
            )
            .await?;
        drop(turn);
        check_permissions(&name, kind, &permissions, compiled.needed_permissions())?;
        self.blobs().put_as(&hash, &bundle_bytes).await?;
        let version = bundle.manifest.version.clone();
        let record = FunctionRecord::new(
            name.clone(),
            owner.clone(),
            FunctionVersion {
                version: version.clone(),
                hash,
                kind,
                size: bundle.payload.len() as u64,
                limits,
                signer: signer.id().to_string(),
                deployed_at: self.now_rfc3339(),
                plugins,
                permissions,
            },
        );
        let registry = self.registry().clone();
        let keep_versions = self.config().max_versions;
        let record = blocking(move || {
            // Checked inside the write transaction: a concurrent deploy, or a revocation of
            // the signing key, cannot slip in between.
            registry.put_function(record, keep_versions, |existing| {
                active_key(&registry, &owner, &signer)?;
                match existing {
                    Some(e) if e.owner != owner => Err(taken(&e.name)),
                    Some(e) if e.version >= version => Err(RuntimeError::OldVersion(format!(
                        "function `{}` is at version {}; deploy a newer version (raise \
                         `version` in the manifest): versions only move forward",
                        e.name, e.version
                    ))),
                    _ => Ok(()),
                }
            })?
        })
        .await?;
        self.keep_precompiled(&hash, &compiled).await;
        self.code_cache().insert(&hash, compiled);
        self.metrics().deployed();
        if let Some(before) = &before {
            self.delete_forgotten_code(before, &record).await;
        }
        tracing::info!(
            function = %record.name, version = %record.version, hash = %record.hash,
            kind = %record.kind, signer = %record.signer, "deployed"
        );
        Ok(record)
    }

    /// Refuses a deploy that would take `owner`'s stored code past its quota (counting what
    /// the version retention will forget of `before`).
    fn check_storage_quota(
        &self,
        owner: &cella_core::TenantName,
        before: Option<&FunctionRecord>,
        adding: u64,
    ) -> Result<(), RuntimeError> {
        let kept = self.registry().stored_bytes_of(owner)?;
        // With the new version the function would hold one more; the oldest beyond
        // `max_versions` go (as `FunctionRecord::forget_oldest` will drop them).
        let forgotten = before.map_or(0, |record| {
            let excess =
                (record.versions.len() + 1).saturating_sub(self.config().max_versions.max(1));
            record
                .versions
                .iter()
                .take(excess)
                .map(|v| v.size)
                .sum::<u64>()
        });
        let would_be = (kept - forgotten.min(kept)).saturating_add(adding);
        let quota = self.config().max_tenant_bytes;
        if would_be > quota {
            return Err(RuntimeError::QuotaExceeded(format!(
                "tenant `{owner}` would keep {would_be} bytes of code on this node, past its \
                 quota of {quota} bytes; delete functions it no longer needs (`cella delete \
                 NAME`), or ask the operator to raise `max_tenant_bytes` under [storage]"
            )));
        }
        Ok(())
    }

    /// Deletes the code of versions the deploy of `after` made the registry forget, unless
    /// another version or function still uses it.
    async fn delete_forgotten_code(&self, before: &FunctionRecord, after: &FunctionRecord) {
        let forgotten: Vec<ContentHash> = before
            .versions
            .iter()
            .filter(|v| !after.versions.iter().any(|kept| kept.hash == v.hash))
            .map(|v| v.hash)
            .collect();
        for hash in forgotten {
            let registry = self.registry().clone();
            match blocking(move || Ok(registry.blob_in_use(&hash)?)).await {
                Ok(false) => {
                    self.code_cache().remove(&hash);
                    self.forget_precompiled(&hash).await;
                    if let Err(e) = self.blobs().delete(&hash).await {
                        // Left behind: it costs space, never correctness.
                        tracing::warn!(%hash, "could not delete a forgotten version's code: {e}");
                    }
                }
                Ok(true) => {}
                Err(e) => tracing::warn!(%hash, "could not check a forgotten version's code: {e}"),
            }
        }
    }

    fn require_active_key(
        &self,
        owner: &cella_core::TenantName,
        signer: &VerifyingKey,
    ) -> Result<(), RuntimeError> {
        active_key(self.registry(), owner, signer)
    }

    /// The code of `record`: loaded from the untrusted blob store, authenticated, decoded, its
    /// signature and hash checked again, then compiled. Anything that fails is never run.
    pub(crate) async fn load_bundle(
        &self,
        record: &FunctionRecord,
    ) -> Result<Compiled, RuntimeError> {
        let subject = format!("to run function `{}`", record.name);
        let refuse = |e: RuntimeError| self.refuse(&subject, e);
        let bytes = self
            .checked_from_storage(&subject, self.blobs().get_authenticated(&record.hash))
            .await?;
        let tampered = |detail: String| BlobError::Tampered {
            hash: record.hash,
            detail,
        };
        let bundle = Bundle::decode(&bytes, u64::MAX)
            .map_err(|e| refuse(tampered(format!("it no longer decodes: {e}")).into()))?;
        let signer = bundle
            .verify_signature()
            .map_err(|e| refuse(tampered(e.to_string()).into()))?;
        if bundle.hash().0 != record.hash || signer.id().as_str() != record.signer {
            return Err(refuse(
                tampered("it is not the bundle the registry names".into()).into(),
            ));
        }
        self.build(
            &record.name,
            record.kind,
            &record.plugins,
            &record.limits,
            Bytes::from(bundle.payload),
            None,
        )
        .await
    }

    /// A verified payload → the code that runs. A function that names a plug-in is made from
    /// the plug-in's image: its payload (JavaScript source, or a plug-in's configuration) is
    /// given to the plug-in's initialiser and the snapshot is the function's image. Otherwise
    /// the payload is WebAssembly, compiled as it is.
    async fn build(
        &self,
        name: &FunctionName,
        kind: FunctionKind,
        plugins: &[PluginUse],
        limits: &Limits,
        payload: Bytes,
        turn: Option<&crate::compile_budget::CompileTurn<'_>>,
    ) -> Result<Compiled, RuntimeError> {
        match (kind, plugins) {
            (FunctionKind::WasiHttp, [_, ..]) => {
                return Err(RuntimeError::Invalid(
                    "a `wasi-http` function cannot be made from a plug-in; remove `plugins` \
                     from its manifest"
                        .into(),
                ));
            }
            (_, [plugin]) => {
                return self
                    .function_image(name.as_str(), plugin, payload, limits, turn)
                    .await;
            }
            (FunctionKind::Js, _) | (_, [_, _, ..]) => {
                return Err(RuntimeError::Invalid(format!(
                    "a function is made from at most one plug-in, and a JavaScript function \
                     from exactly one, its engine (add `[[plugins]] name = \"quickjs\"` with \
                     the hash `cella plugin list` shows); this manifest names {}",
                    plugins.len()
                )));
            }
            _ => {}
        }
        let compiled = self.compile(payload, turn).await?;
        if compiled.kind() != kind {
            return Err(RuntimeError::Invalid(format!(
                "the manifest says `kind = \"{kind}\"` but the payload is a {} function; fix \
                 `kind` in the manifest",
                compiled.kind()
            )));
        }
        Ok(compiled)
    }

    /// Registers a public key for the calling tenant.
    pub async fn add_key(
        &self,
        caller: &Principal,
        public_key: &str,
    ) -> Result<TenantKey, RuntimeError> {
        let tenant = tenant_of(caller)?.clone();
        let key: VerifyingKey = public_key
            .parse()
            .map_err(|e: cella_bundle::KeyError| RuntimeError::Invalid(e.to_string()))?;
        let registry = self.registry().clone();
        blocking(move || Ok(registry.add_key(&tenant, key.id().as_str(), &key.to_string())?)).await
    }

    /// The calling tenant's keys, revoked ones included.
    pub fn keys(&self, caller: &Principal) -> Result<Vec<TenantKey>, RuntimeError> {
        Ok(self.registry().keys(tenant_of(caller)?)?)
    }

    /// A page of [`Platform::keys`], by id.
    pub fn keys_page(
        &self,
        caller: &Principal,
        request: &crate::PageRequest,
    ) -> Result<crate::Page<TenantKey>, RuntimeError> {
        crate::paging::page_of(self.keys(caller)?, |key| key.id.clone(), request)
    }

    /// Revokes one of the calling tenant's keys: no new deploy may be signed by it. Versions
    /// already deployed with it keep running until replaced or deleted; returns the functions
    /// whose current version it signed.
    pub async fn revoke_key(
        &self,
        caller: &Principal,
        id: &str,
    ) -> Result<(TenantKey, Vec<FunctionName>), RuntimeError> {
        let tenant = tenant_of(caller)?.clone();
        let registry = self.registry().clone();
        let id = id.to_owned();
        blocking(move || {
            let key = registry.revoke_key(&tenant, &id)?;
            let signed = registry
                .functions_owned_by(&tenant)?
                .into_iter()
                .filter(|f| f.signer == key.id)
                .map(|f| f.name)
                .collect();
            Ok((key, signed))
        })
        .await
    }
}

/// The signer must be a registered, unrevoked key of `owner` — the very key, not only its id.
fn active_key(
    registry: &cella_store::Registry,
    owner: &cella_core::TenantName,
    signer: &VerifyingKey,
) -> Result<(), RuntimeError> {
    let id = signer.id();
    match registry.key(owner, id.as_str())? {
        Some(key) if key.is_active() && key.public_key == signer.to_string() => Ok(()),
        Some(key) if key.public_key != signer.to_string() => Err(RuntimeError::UntrustedKey(
            format!("the bundle's signer is not the key {id} that tenant `{owner}` registered"),
        )),
        Some(_) => Err(RuntimeError::UntrustedKey(format!(
            "the bundle is signed by key {id}, which tenant `{owner}` revoked; sign it with a \
             current key (`cella keys list`)"
        ))),
        None => Err(RuntimeError::UntrustedKey(format!(
            "the bundle is signed by key {id}, which is not registered for tenant `{owner}`; \
             register your public key with `cella keys add FILE.pub`"
        ))),
    }
}

/// The function kind a bundle's manifest declares.
fn supported_kind(bundle: &Bundle) -> Result<FunctionKind, RuntimeError> {
    match bundle.manifest.kind {
        BundleKind::WasiCommand => Ok(FunctionKind::WasiCommand),
        BundleKind::WasiHttp => Ok(FunctionKind::WasiHttp),
        BundleKind::Js => Ok(FunctionKind::Js),
    }
}

/// A function may import only what its manifest grants (checked on the code that runs: for a
/// function made from a plug-in, the image's imports). Key-value state exists only for WASI
/// commands and JavaScript functions.
pub(crate) fn check_permissions(
    name: &FunctionName,
    kind: FunctionKind,
    granted: &Permissions,
    needed: std::collections::BTreeSet<Permission>,
) -> Result<(), RuntimeError> {
    let missing: Vec<Permission> = needed
        .into_iter()
        // The JavaScript engine imports the state functions for every function; whether a
        // function's code may use them is decided when it calls them (without `kv` the call
        // throws and is logged as a denial).
        .filter(|p| !(kind == FunctionKind::Js && *p == Permission::Kv))
        .filter(|p| !granted.grants(p))
        .collect();
    if !missing.is_empty() {
        return Err(RuntimeError::MissingPermissions {
            name: name.clone(),
            missing,
        });
    }
    if !granted.http.is_empty() && kind != FunctionKind::WasiHttp {
        return Err(RuntimeError::Invalid(
            "`http = [...]`: outgoing HTTPS is made by `wasi-http` components (through \
             wasi:http/outgoing-handler); a WASI command or JavaScript function cannot use it, \
             so remove it from [permissions]"
                .into(),
        ));
    }
    if granted.scratch_mib > 0 && kind != FunctionKind::WasiHttp {
        return Err(RuntimeError::Invalid(
            "`scratch_mib`: a scratch file system is given to `wasi-http` components (built for \
             wasm32-wasip2); WASI preview 1 commands and JavaScript functions get no file \
             system, so remove it from [permissions] or build the function as a component"
                .into(),
        ));
    }
    Ok(())
}

/// The binary is the kind its manifest says, and its memories fit the function's limit.
fn check_shape(
    name: &FunctionName,
    kind: FunctionKind,
    limits: &Limits,
    shape: &cella_sandbox::Preflight,
) -> Result<(), RuntimeError> {
    if shape.kind != kind {
        return Err(RuntimeError::Invalid(format!(
            "the manifest of `{name}` says `kind = \"{kind}\"` but the payload is a {} \
             function; fix `kind` in the manifest",
            shape.kind
        )));
    }
    if shape.memory_minimum_bytes > limits.memory_bytes {
        return Err(RuntimeError::LimitTooLow(format!(
            "function `{name}`'s memory starts at {} bytes, above its memory limit of {} \
             bytes: it could never run. Raise `memory` under [limits] in its manifest (up to \
             the platform's maximum) or lower its initial memory",
            shape.memory_minimum_bytes, limits.memory_bytes
        )));
    }
    Ok(())
}

/// `expect-hash`: refuses to run anything but the bundle the caller expects.
pub(crate) fn check_expected(
    record: &FunctionRecord,
    expected: Option<&ContentHash>,
) -> Result<(), RuntimeError> {
    match expected {
        Some(expected) if *expected != record.hash => Err(RuntimeError::HashMismatch {
            name: record.name.clone(),
            expected: expected.to_string(),
            actual: format!("{} (version {})", record.hash, record.version),
        }),
        _ => Ok(()),
    }
}
