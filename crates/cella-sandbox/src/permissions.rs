//! Which permissions a function's imports need (see `cella_core::permissions` for the rule):
//! only the imports that give something out of nothing — time, randomness, state — count.
//! Importing the environment, file or socket functions is no request: they reach only what
//! the invocation was handed, which is nothing unless granted.

use std::collections::BTreeSet;

use cella_core::Permission;
use wasmtime::component::types::ComponentItem;

use crate::compile::Compiled;
use crate::state::STATE_MODULE;

/// The permission a core module's import needs, if any.
pub(crate) fn core_import(module: &str, name: &str) -> Option<Permission> {
    match module {
        "wasi_snapshot_preview1" => preview1(name),
        STATE_MODULE => Some(Permission::Kv),
        _ => None,
    }
}

/// The permission a WASI preview 1 import needs, if any.
fn preview1(name: &str) -> Option<Permission> {
    match name {
        "clock_time_get" | "clock_res_get" | "poll_oneoff" => Some(Permission::Clocks),
        "random_get" => Some(Permission::Random),
        _ => None,
    }
}

/// The permission a component's imported interface needs, if any.
pub(crate) fn interface(name: &str) -> Option<Permission> {
    let package = name.split('/').next().unwrap_or(name);
    match package.split('@').next().unwrap_or(package) {
        "wasi:clocks" => Some(Permission::Clocks),
        "wasi:random" => Some(Permission::Random),
        "cella:state" => Some(Permission::Kv),
        _ => None,
    }
}

impl Compiled {
    /// The permissions this function's imports need. A module importing [`STATE_MODULE`]
    /// (a component, `cella:state/store`) needs `kv`; the clock and random functions need `clocks` and `random`. For components,
    /// an interface counts only if functions are imported from it: `wasi:http` names types of
    /// `wasi:clocks` without calling it.
    pub fn needed_permissions(&self) -> BTreeSet<Permission> {
        let mut needed = BTreeSet::new();
        match self {
            Compiled::Command(pre) => {
                for import in pre.module().imports() {
                    needed.extend(core_import(import.module(), import.name()));
                }
            }
            Compiled::Http(proxy) => {
                let component = proxy.instance_pre().component();
                let engine = component.engine();
                for (name, item) in component.component_type().imports(engine) {
                    let ComponentItem::ComponentInstance(instance) = item.ty else {
                        continue;
                    };
                    let calls_something = instance
                        .exports(engine)
                        .any(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)));
                    if calls_something {
                        needed.extend(interface(name));
                    }
                }
            }
        }
        needed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ambient_imports_need_a_permission() {
        assert_eq!(preview1("clock_time_get"), Some(Permission::Clocks));
        assert_eq!(preview1("random_get"), Some(Permission::Random));
        for harmless in [
            "environ_get",
            "fd_write",
            "path_open",
            "sock_accept",
            "proc_exit",
        ] {
            assert_eq!(preview1(harmless), None, "{harmless}");
        }
        assert_eq!(
            interface("wasi:clocks/wall-clock@0.2.6"),
            Some(Permission::Clocks)
        );
        assert_eq!(
            interface("wasi:random/insecure-seed@0.2.0"),
            Some(Permission::Random)
        );
        assert_eq!(interface("wasi:cli/environment@0.2.0"), None);
        assert_eq!(interface("cella:state/store@0.1.0"), Some(Permission::Kv));
    }
}
