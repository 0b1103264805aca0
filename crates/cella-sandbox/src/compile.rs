//! Bytes → a function ready to instantiate. The kind of function is read from the bytes:
//! a core module must be a WASI command, a component must be a `wasi:http/proxy` handler.

use cella_core::FunctionKind;
use wasmtime::ExternType;
use wasmtime::component::Component;
use wasmtime::{InstancePre, Module};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::command::CommandState;
use crate::engine::Sandbox;
use crate::error::CompileError;
use crate::http::HttpState;

/// A compiled function with its imports resolved (wasmtime's `InstancePre`): instantiating it
/// per invocation is cheap. Cloning shares the compiled code.
#[derive(Clone)]
pub enum Compiled {
    Command(InstancePre<CommandState>),
    Http(ProxyPre<HttpState>),
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Compiled").field(&self.kind()).finish()
    }
}

impl Compiled {
    pub fn kind(&self) -> FunctionKind {
        match self {
            Compiled::Command(_) => FunctionKind::WasiCommand,
            Compiled::Http(_) => FunctionKind::WasiHttp,
        }
    }

    /// Bytes of native code and data the compiled image holds in memory: what keeping it
    /// cached costs.
    pub fn image_bytes(&self) -> usize {
        let range = match self {
            Compiled::Command(pre) => pre.module().image_range(),
            Compiled::Http(pre) => pre.instance_pre().component().image_range(),
        };
        range.end.addr() - range.start.addr()
    }
}

/// The two binary encodings that start with `\0asm`, told apart by the version field.
enum Encoding {
    Module,
    Component,
}

const MODULE_VERSION: u32 = 0x0000_0001;
const COMPONENT_VERSION: u32 = 0x0001_000d;

fn encoding(bytes: &[u8]) -> Result<Encoding, CompileError> {
    let Some(header) = bytes.get(..8) else {
        return Err(CompileError::NotWasm);
    };
    if &header[..4] != b"\0asm" {
        return Err(CompileError::NotWasm);
    }
    match u32::from_le_bytes([header[4], header[5], header[6], header[7]]) {
        MODULE_VERSION => Ok(Encoding::Module),
        COMPONENT_VERSION => Ok(Encoding::Component),
        other => Err(CompileError::UnknownEncoding(other)),
    }
}

impl Sandbox {
    /// Reads `bytes`' shape without compiling them, under the platform's compile limits and
    /// memory limit (see [`crate::preflight`]): cheap, linear, and enough to refuse a binary
    /// too large to compile or one lacking a permission before any compile work is done.
    pub fn preflight(&self, bytes: &[u8]) -> Result<crate::Preflight, CompileError> {
        encoding(bytes)?;
        crate::preflight::preflight(bytes, &self.config.compile, self.config.max_memory_bytes)
    }

    /// Checks `bytes` ([`Sandbox::preflight`]), compiles them to native code and resolves
    /// their imports. CPU-heavy: on an async runtime use [`Sandbox::compile_queued`], which
    /// runs it on the node's compiler thread at low priority.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, CompileError> {
        self.preflight(bytes)?;
        self.compile_checked(bytes)
    }

    /// [`Sandbox::compile`] of bytes [`Sandbox::preflight`] has passed.
    pub(crate) fn compile_checked(&self, bytes: &[u8]) -> Result<Compiled, CompileError> {
        let invalid = |e: wasmtime::Error| CompileError::Invalid(format!("{e:#}"));
        match encoding(bytes)? {
            Encoding::Module => {
                self.link_module(Module::new(&self.engine, bytes).map_err(invalid)?)
            }
            Encoding::Component => {
                self.link_component(Component::new(&self.engine, bytes).map_err(invalid)?)
            }
        }
    }

    /// The engine's version and settings, as a fingerprint: precompiled code only loads into
    /// an engine with the same one.
    pub fn engine_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hasher.finish()
    }

    /// Loads code that [`Compiled::precompiled`] wrote, as the given kind, and links it.
    ///
    /// The bytes must come from this platform: native code is not validated again. Callers
    /// pass only bytes they sealed themselves and have authenticated (the runtime keeps them
    /// under an AEAD bound to the bundle hash and this engine's fingerprint).
    #[allow(unsafe_code)]
    pub fn load_precompiled(
        &self,
        kind: FunctionKind,
        authenticated: &[u8],
    ) -> Result<Compiled, CompileError> {
        let stale = |e: wasmtime::Error| CompileError::Invalid(format!("precompiled code: {e:#}"));
        match kind {
            // A JavaScript function's image is a WASI command module.
            FunctionKind::WasiCommand | FunctionKind::Js => {
                // SAFETY: wasmtime requires the bytes to be trusted output of `serialize` from
                // a compatible engine. They are: the caller authenticated them (AEAD with a key
                // only this platform holds, bound to this engine's fingerprint), and wasmtime
                // still checks the engine version and settings and refuses a mismatch.
                let module =
                    unsafe { Module::deserialize(&self.engine, authenticated) }.map_err(stale)?;
                self.link_module(module)
            }
            FunctionKind::WasiHttp => {
                // SAFETY: as above.
                let component = unsafe { Component::deserialize(&self.engine, authenticated) }
                    .map_err(stale)?;
                self.link_component(component)
            }
        }
    }

    fn link_module(&self, module: Module) -> Result<Compiled, CompileError> {
        let has_start = module
            .exports()
            .any(|e| e.name() == "_start" && matches!(e.ty(), ExternType::Func(_)));
        if !has_start {
            return Err(CompileError::NotACommand);
        }
        let pre = self
            .command_linker
            .instantiate_pre(&module)
            .map_err(|e| CompileError::UnsupportedImport(format!("{e:#}")))?;
        Ok(Compiled::Command(pre))
    }

    fn link_component(&self, component: Component) -> Result<Compiled, CompileError> {
        let pre = self
            .http_linker
            .instantiate_pre(&component)
            .map_err(|e| CompileError::UnsupportedImport(format!("{e:#}")))?;
        let proxy =
            ProxyPre::new(pre).map_err(|e| CompileError::NotAnHttpComponent(format!("{e:#}")))?;
        Ok(Compiled::Http(proxy))
    }
}

impl Compiled {
    /// The native code in wasmtime's precompiled form, for [`Sandbox::load_precompiled`].
    pub fn precompiled(&self) -> Result<Vec<u8>, CompileError> {
        let serialized = match self {
            Compiled::Command(pre) => pre.module().serialize(),
            Compiled::Http(proxy) => proxy.instance_pre().component().serialize(),
        };
        serialized.map_err(|e| CompileError::Engine(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_webassembly() {
        let sandbox = Sandbox::new(Default::default()).unwrap();
        for bytes in [
            &b""[..],
            b"\0as",
            b"#!/bin/sh\necho hi\n",
            b"\0asm\x02\0\0\0",
        ] {
            let err = sandbox.compile(bytes).expect_err("must be refused");
            assert!(
                matches!(
                    err,
                    CompileError::NotWasm | CompileError::UnknownEncoding(_)
                ),
                "{err}"
            );
        }
        // A valid header with a truncated body is invalid WebAssembly, not a crash.
        let err = sandbox.compile(b"\0asm\x01\0\0\0\x01\xff").err().unwrap();
        assert!(matches!(err, CompileError::Invalid(_)), "{err}");
        // An empty but valid module is not a command.
        let err = sandbox.compile(b"\0asm\x01\0\0\0").err().unwrap();
        assert!(matches!(err, CompileError::NotACommand), "{err}");
    }

    #[test]
    fn precompiled_code_round_trips_and_foreign_bytes_are_refused() {
        let sandbox = Sandbox::new(Default::default()).unwrap();
        // (module (func (export "_start")))
        let wasm = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x07\x0a\x01\x06_start\0\0\x0a\x04\x01\x02\0\x0b";
        let compiled = sandbox.compile(wasm).unwrap();
        let bytes = compiled.precompiled().unwrap();
        let loaded = sandbox
            .load_precompiled(FunctionKind::WasiCommand, &bytes)
            .unwrap();
        assert_eq!(loaded.kind(), FunctionKind::WasiCommand);
        // Not wasmtime's precompiled form: an error, not a crash.
        let err = sandbox
            .load_precompiled(FunctionKind::WasiCommand, wasm)
            .err()
            .unwrap();
        assert!(matches!(err, CompileError::Invalid(_)), "{err}");
        assert!(
            sandbox
                .load_precompiled(FunctionKind::WasiHttp, &bytes)
                .is_err()
        );
    }
}
