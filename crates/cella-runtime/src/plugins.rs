//! Plug-ins (PIE's plug-in enclaves, in software). The operator registers a module that
//! exports `wizer-initialize`; the platform runs that initialiser once, inside the sandbox, and
//! keeps the snapshot — the plug-in's *image*, measured by its SHA-256 and sealed in the blob
//! store. A function that names the plug-in gets its own image made from that one at deploy
//! (for JavaScript: the engine with the function's module already evaluated; for a plug-in
//! holding a model or table: its state, configured by the function's payload), and every
//! invocation instantiates that image afresh; the engine maps it copy-on-write, so an instance
//! pays only for the pages it writes however large the plug-in's state is.
//!
//! An image is loaded back from the untrusted blob store only if it authenticates and hashes
//! to the measurement the registry holds; anything else is refused and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cella_bundle::PluginRef;
use cella_core::{ContentHash, Limits, Plugin, PluginName, PluginUse};
use cella_sandbox::{Compiled, Initializer, Preinitializer};
use cella_store::Principal;
use tokio::sync::OnceCell;

use crate::RuntimeError;
use crate::platform::{Platform, blocking, require_admin};

/// Pre-initialisers of plug-in images, by measurement: each image is compiled once per process.
#[derive(Default)]
pub(crate) struct PluginImages {
    loaded: Mutex<HashMap<ContentHash, Arc<OnceCell<Preinitializer>>>>,
}

impl Platform {
    /// Registers `module` as plug-in `name` (operator only): pre-initialises it, measures and
    /// seals the image. The same module again under its name returns the existing record.
    pub async fn add_plugin(
        &self,
        caller: &Principal,
        name: &str,
        module: Bytes,
    ) -> Result<Plugin, RuntimeError> {
        require_admin(caller, "register plug-ins")?;
        let name = PluginName::new(name)?;
        let hash = ContentHash::of(&module);
        if let Some(existing) = self.registry().plugin(&name)? {
            if existing.hash == hash {
                return Ok(existing);
            }
            // Refused before any work; the registry checks again when it writes.
            return Err(cella_store::RegistryError::PluginExists {
                name,
                hash: existing.hash.to_string(),
            }
            .into());
        }
        let failed = {
            let name = name.clone();
            move |source| RuntimeError::PluginPreinit { name, source }
        };
        let sandbox = self.sandbox().clone();
        let wasm = module.clone();
        let preinitializer = blocking({
            let failed = failed.clone();
            move || sandbox.preinitializer(&wasm).map_err(failed)
        })
        .await?;
        let image = {
            let _slot = self.concurrency().acquire(caller)?;
            self.sandbox()
                .preinitialize(
                    &preinitializer,
                    Bytes::new(),
                    &self.config().max_limits,
                    Initializer::Keep,
                )
                .await
                .map_err(failed)?
        };
        let image_size = image.wasm.len() as u64;
        let image_hash = self.blobs().put(Bytes::from(image.wasm)).await?;
        let plugin = Plugin {
            name,
            hash,
            image: image_hash,
            size: module.len() as u64,
            image_size,
            added_at: self.now_rfc3339(),
        };
        let registry = self.registry().clone();
        // Images are stored by content: if this write loses a race for the name, the image
        // may stay unnamed (another registration of the same module may still need it).
        let plugin = blocking(move || Ok(registry.add_plugin(plugin)?)).await?;
        tracing::info!(
            plugin = %plugin.name, hash = %plugin.hash, image = %plugin.image,
            "plug-in registered"
        );
        Ok(plugin)
    }

    /// The registered plug-ins. Anyone authenticated may list them: tenants name them, by hash,
    /// in their manifests.
    pub fn plugins(&self, _caller: &Principal) -> Result<Vec<Plugin>, RuntimeError> {
        Ok(self.registry().plugins()?)
    }

    /// A page of [`Platform::plugins`], by name.
    pub fn plugins_page(
        &self,
        caller: &Principal,
        request: &crate::PageRequest,
    ) -> Result<crate::Page<Plugin>, RuntimeError> {
        crate::paging::page_of(self.plugins(caller)?, |p| p.name.to_string(), request)
    }

    /// The registered plug-ins as a statement signed by the node's identity key for `nonce`
    /// (served with the attestation evidence, which binds that key).
    pub fn plugin_statement(
        &self,
        nonce: &[u8],
    ) -> Result<cella_receipt::SignedPluginList, RuntimeError> {
        crate::platform::check_nonce_length(nonce)?;
        let claims = self
            .registry()
            .plugins()?
            .into_iter()
            .map(|p| cella_receipt::PluginClaim {
                name: p.name.to_string(),
                hash: p.hash.to_string(),
                image: p.image.to_string(),
            })
            .collect();
        Ok(cella_receipt::SignedPluginList::sign(nonce, claims, |m| {
            self.identity().sign(m)
        }))
    }

    /// The plug-ins a manifest names, each registered under that name with that very hash.
    pub(crate) fn resolve_plugins(&self, refs: &[PluginRef]) -> Result<Vec<Plugin>, RuntimeError> {
        refs.iter()
            .map(|wanted| {
                let name = PluginName::new(wanted.name.as_str())?;
                match self.registry().plugin(&name)? {
                    Some(plugin) if plugin.hash == wanted.hash => Ok(plugin),
                    Some(plugin) => Err(RuntimeError::NoSuchPlugin(format!(
                        "the manifest names plug-in `{name}` with hash {}, but `{name}` on this \
                         platform is {}; put that hash in the manifest (`cella plugin list`) if \
                         you trust it",
                        wanted.hash, plugin.hash
                    ))),
                    None => Err(RuntimeError::NoSuchPlugin(format!(
                        "the manifest needs plug-in `{name}`, which this platform does not \
                         have; see `cella plugin list` (the operator adds plug-ins with `cella \
                         plugin add`)"
                    ))),
                }
            })
            .collect()
    }

    /// The image a function's code is added to: loaded once per process (concurrent callers
    /// wait for the first), verified against its measurement.
    async fn plugin_image(&self, plugin: &PluginUse) -> Result<Preinitializer, RuntimeError> {
        let slot = self
            .plugin_images()
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(plugin.image)
            .or_default()
            .clone();
        slot.get_or_try_init(async || {
            let subject = format!("the image of plug-in `{}`", plugin.name);
            let image = self
                .checked_from_storage(&subject, self.blobs().get_verified(&plugin.image))
                .await?;
            let sandbox = self.sandbox().clone();
            let name = plugin.name.clone();
            blocking(move || {
                sandbox
                    .preinitializer(&image)
                    // The image was measured when it was registered and has just been verified:
                    // if it no longer compiles, the platform is at fault, not the tenant.
                    .map_err(|e| RuntimeError::Internal(format!("plug-in `{name}`'s image: {e}")))
            })
            .await
        })
        .await
        .cloned()
    }

    /// A function's image made from `plugin`'s: the plug-in's initialiser runs again with the
    /// function's payload on stdin (a JavaScript engine evaluates it as the function's module),
    /// under the function's own limits; the snapshot is compiled.
    pub(crate) async fn function_image(
        &self,
        function: &str,
        plugin: &PluginUse,
        payload: Bytes,
        limits: &Limits,
        turn: Option<&crate::compile_budget::CompileTurn<'_>>,
    ) -> Result<Compiled, RuntimeError> {
        let preinitializer = self.plugin_image(plugin).await?;
        let image = self
            .sandbox()
            .preinitialize(&preinitializer, payload, limits, Initializer::Drop)
            .await
            .map_err(|source| RuntimeError::Preinit {
                what: format!(
                    "function `{function}` (made from plug-in `{}`)",
                    plugin.name
                ),
                source,
            })?;
        self.compile(Bytes::from(image.wasm), turn).await
    }
}
