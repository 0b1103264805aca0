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

impl Compiled {
    pub fn kind(&self) -> FunctionKind {
        match self {
            Compiled::Command(_) => FunctionKind::WasiCommand,
            Compiled::Http(_) => FunctionKind::WasiHttp,
        }
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
    /// Validates and compiles `bytes` to native code and resolves their imports. CPU-heavy:
    /// callers on an async runtime should run it on a blocking thread.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, CompileError> {
        match encoding(bytes)? {
            Encoding::Module => {
                let module = Module::new(&self.engine, bytes)
                    .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
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
            Encoding::Component => {
                let component = Component::new(&self.engine, bytes)
                    .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
                let pre = self
                    .http_linker
                    .instantiate_pre(&component)
                    .map_err(|e| CompileError::UnsupportedImport(format!("{e:#}")))?;
                let proxy = ProxyPre::new(pre)
                    .map_err(|e| CompileError::NotAnHttpComponent(format!("{e:#}")))?;
                Ok(Compiled::Http(proxy))
            }
        }
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
            let err = sandbox.compile(bytes).err().expect("must be refused");
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
}
