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
        if let Some(existing) = self.registry().function(&name)?
            && existing.owner != owner
        {
            return Err(taken(&name));
        }
        let hash = bundle.hash().0;
        let plugins: Vec<PluginUse> = self
            .resolve_plugins(&bundle.manifest.plugins)?
            .iter()
            .map(Plugin::used)
            .collect();
        // Making an image from a plug-in runs the tenant's code in an instance: it counts
        // against the same limits as an invocation.
        let _slot = match plugins.is_empty() {
            true => None,
            false => Some(self.concurrency().acquire(caller)?),
        };
        let compiled = self
            .build(
                &name,
                kind,
                &plugins,
                &limits,
                Bytes::from(bundle.payload.clone()),
            )
            .await?;
        check_permissions(&name, kind, &permissions, &compiled)?;
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
        let record = blocking(move || {
            // Checked inside the write transaction: a concurrent deploy, or a revocation of
            // the signing key, cannot slip in between.
            registry.put_function(record, |existing| {
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
        tracing::info!(
            function = %record.name, version = %record.version, hash = %record.hash,
            kind = %record.kind, signer = %record.signer, "deployed"
        );
        Ok(record)
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
                    .function_image(name.as_str(), plugin, payload, limits)
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
        let compiled = self.compile(payload).await?;
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
    compiled: &Compiled,
) -> Result<(), RuntimeError> {
    let missing: Vec<Permission> = compiled
        .needed_permissions()
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
