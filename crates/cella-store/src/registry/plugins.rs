//! The plug-ins the operator registered. A name is bound to one module for good: functions
//! name a plug-in by name and hash, so a name never comes to mean other code.

use cella_core::{Plugin, PluginName};
use redb::TableDefinition;

use super::{Registry, RegistryError, Sealed, db};

/// blinded plug-in name → sealed JSON [`Plugin`]
pub(super) const PLUGINS: Sealed = TableDefinition::new("sealed_plugins");

impl Registry {
    /// Registers `plugin`. Registering the same module again under its name returns the
    /// existing record; another module under a taken name is refused.
    pub fn add_plugin(&self, plugin: Plugin) -> Result<Plugin, RegistryError> {
        self.write(|tx| {
            let mut plugins = tx.open_table(PLUGINS).map_err(db)?;
            let key = plugin.name.as_str().as_bytes();
            if let Some(existing) = self.get::<Plugin>(&plugins, PLUGINS, key)? {
                if existing.hash == plugin.hash {
                    return Ok(existing);
                }
                return Err(RegistryError::PluginExists {
                    name: existing.name,
                    hash: existing.hash.to_string(),
                });
            }
            self.put(&mut plugins, PLUGINS, key, &plugin)?;
            Ok(plugin.clone())
        })
    }

    pub fn plugin(&self, name: &PluginName) -> Result<Option<Plugin>, RegistryError> {
        let tx = self.read()?;
        let plugins = tx.open_table(PLUGINS).map_err(db)?;
        self.get(&plugins, PLUGINS, name.as_str().as_bytes())
    }

    /// Every registered plug-in, by name.
    pub fn plugins(&self) -> Result<Vec<Plugin>, RegistryError> {
        let tx = self.read()?;
        let plugins = tx.open_table(PLUGINS).map_err(db)?;
        let mut all: Vec<Plugin> = self.all(&plugins, PLUGINS)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}
