//! Plug-ins: pre-initialised WebAssembly images the operator registers once — a language
//! runtime, a library, or initial state such as a model (PIE's plug-in enclaves, in software).
//! A function that names one gets its own image made from it at deploy; every instance of that
//! image maps it copy-on-write.

use serde::{Deserialize, Serialize};

use crate::{ContentHash, PluginName};

/// A registered plug-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugin {
    pub name: PluginName,
    /// SHA-256 of the module as registered: what bundles name it by.
    pub hash: ContentHash,
    /// SHA-256 of the pre-initialised image made from it inside the platform (its measurement):
    /// what instances are made from, and what receipts name.
    pub image: ContentHash,
    /// Size of the registered module, in bytes.
    pub size: u64,
    /// Size of the image, in bytes.
    pub image_size: u64,
    pub added_at: String,
}

impl Plugin {
    pub fn used(&self) -> PluginUse {
        PluginUse {
            name: self.name.clone(),
            hash: self.hash,
            image: self.image,
        }
    }
}

/// A plug-in as a deployed function uses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PluginUse {
    pub name: PluginName,
    pub hash: ContentHash,
    pub image: ContentHash,
}
