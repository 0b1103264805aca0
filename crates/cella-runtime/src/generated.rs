//! Generated records, for `cella bench scale`: a node filled with many functions and versions
//! without compiling or signing each. Each generated function runs the code of one deployed
//! for real (same bundle, same hash, so the code is verified and compiled as that one's).
//! Reachable only in-process — the HTTP API has no way to it.

use cella_core::{FunctionName, FunctionRecord, TenantName};

use crate::platform::blocking;
use crate::{Platform, RuntimeError};

impl Platform {
    /// Registers `name` at `version` for `owner` (callable by every tenant when `public`),
    /// running the code of `like`: a new function, or a new version of one `owner` has.
    pub async fn register_generated(
        &self,
        like: &FunctionRecord,
        name: &FunctionName,
        owner: &TenantName,
        version: semver::Version,
        public: bool,
    ) -> Result<FunctionRecord, RuntimeError> {
        let mut current = like
            .versions
            .last()
            .cloned()
            .ok_or_else(|| RuntimeError::Invalid("the model function has no version".into()))?;
        current.version = version.clone();
        current.deployed_at = self.now_rfc3339();
        let mut record = FunctionRecord::new(name.clone(), owner.clone(), current);
        record.access.public = public;
        let registry = self.registry().clone();
        let keep = self.config().max_versions;
        let owner = owner.clone();
        blocking(move || {
            registry.put_function(record, keep, |existing| match existing {
                Some(e) if e.owner != owner => Err(RuntimeError::Forbidden(format!(
                    "function `{}` belongs to another tenant",
                    e.name
                ))),
                // As for a deploy: versions only move forward.
                Some(e) if e.version >= version => Err(RuntimeError::OldVersion(format!(
                    "function `{}` is at version {}",
                    e.name, e.version
                ))),
                _ => Ok(()),
            })?
        })
        .await
    }
}
