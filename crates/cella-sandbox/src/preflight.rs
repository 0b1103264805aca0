//! What a binary is, read before anything is compiled. A valid module can still cost the
//! compiler gigabytes and minutes (a million one-instruction functions in 9 MB), so the shape
//! that drives compilation's cost — functions, code bytes, the largest function — is checked
//! against [`CompileLimits`] in one linear pass that allocates almost nothing; so are memory
//! minimums against the platform's memory limit, and the imports, which say what permissions
//! the function needs (a deploy missing one is refused without compiling).
//!
//! Function bodies are not validated here (wasmtime does that while compiling); everything
//! else is, with every WebAssembly feature on, so nothing wasmtime would accept is refused.

use std::collections::BTreeSet;

use cella_core::{FunctionKind, Permission};
use wasmparser::component_types::ComponentEntityType;
use wasmparser::{Encoding, Parser, Payload, ValidPayload, Validator, WasmFeatures};

use crate::error::CompileError;

/// How much code one function may bring to the compiler. The defaults admit the largest real
/// components known to run on cella with room to spare — a CPython `wasi:http` component from
/// componentize-py 0.25 (18 MB: 14 modules, 13,485 functions, 6.6 MB of code, its largest
/// function, the interpreter loop, 427 KB) — and bound what one compile can cost: about
/// 300 MB and a few seconds of CPU for 100,000 small functions.
#[derive(Debug, Clone)]
pub struct CompileLimits {
    /// Functions defined in the binary, in all its modules together.
    pub max_functions: u64,
    /// Bytes of code (code sections), in all its modules together.
    pub max_code_bytes: u64,
    /// Bytes of the largest single function body (a compiler's cost grows faster than
    /// linearly with a function's size).
    pub max_function_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_functions: 100_000,
            max_code_bytes: 48 << 20,
            max_function_bytes: 2 << 20,
        }
    }
}

/// A binary's shape, read without compiling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// A core module is a WASI command; a component a `wasi:http` handler.
    pub kind: FunctionKind,
    pub functions: u64,
    pub code_bytes: u64,
    /// The largest memory minimum of its memories, in bytes.
    pub memory_minimum_bytes: u64,
    /// What its imports need (the rule of [`crate::Compiled::needed_permissions`]).
    pub needed_permissions: BTreeSet<Permission>,
}

/// Reads `bytes` under `limits`; memories may not start above `max_memory_bytes`.
pub(crate) fn preflight(
    bytes: &[u8],
    limits: &CompileLimits,
    max_memory_bytes: u64,
) -> Result<Preflight, CompileError> {
    let invalid = |e: wasmparser::BinaryReaderError| CompileError::Invalid(e.to_string());
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    let mut shape = Preflight {
        kind: FunctionKind::WasiCommand,
        functions: 0,
        code_bytes: 0,
        memory_minimum_bytes: 0,
        needed_permissions: BTreeSet::new(),
    };
    // Modules and components nested inside the one being read (0: the outermost).
    let mut depth = 0usize;
    let mut root_imports = Vec::new();
    let mut root_types = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        match &payload {
            Payload::Version { encoding, .. } if depth == 0 => {
                shape.kind = match encoding {
                    Encoding::Module => FunctionKind::WasiCommand,
                    Encoding::Component => FunctionKind::WasiHttp,
                };
            }
            Payload::FunctionSection(functions) => {
                shape.functions += u64::from(functions.count());
                over(
                    "defines",
                    "functions",
                    shape.functions,
                    limits.max_functions,
                )?;
            }
            Payload::CodeSectionStart { size, .. } => {
                shape.code_bytes += u64::from(*size);
                over(
                    "has",
                    "bytes of code",
                    shape.code_bytes,
                    limits.max_code_bytes,
                )?;
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                over(
                    "has a function of",
                    "bytes",
                    size,
                    limits.max_function_bytes,
                )?;
            }
            Payload::MemorySection(memories) => {
                for memory in memories.clone() {
                    let memory = memory.map_err(invalid)?;
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16).min(32);
                    let minimum = memory.initial.saturating_mul(page);
                    shape.memory_minimum_bytes = shape.memory_minimum_bytes.max(minimum);
                    if minimum > max_memory_bytes {
                        return Err(CompileError::MemoryMinimum {
                            minimum,
                            limit: max_memory_bytes,
                        });
                    }
                }
            }
            Payload::ComponentImportSection(imports) if depth == 0 => {
                for import in imports.clone() {
                    root_imports.push(import.map_err(invalid)?.name.name.to_owned());
                }
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            _ => {}
        }
        // Bodies are left to wasmtime's validation while it compiles.
        if let ValidPayload::End(types) = validator.payload(&payload).map_err(invalid)? {
            match depth.checked_sub(1) {
                Some(outer) => depth = outer,
                None => root_types = Some(types),
            }
        }
    }
    let types = root_types.ok_or_else(|| CompileError::Invalid("the binary ends early".into()))?;
    let types = types.as_ref();
    if let Some(imports) = types.core_imports() {
        for (module, name, _) in imports {
            shape
                .needed_permissions
                .extend(crate::permissions::core_import(module, name));
        }
    }
    for name in &root_imports {
        // An interface counts only if functions are imported from it (`wasi:http` names
        // types of `wasi:clocks` without calling it).
        let Some(item) = types.component_item_for_import(name) else {
            continue;
        };
        let ComponentEntityType::Instance(instance) = item.ty else {
            continue;
        };
        let calls_something = types[instance]
            .exports
            .values()
            .any(|export| matches!(export.ty, ComponentEntityType::Func(_)));
        if calls_something {
            shape
                .needed_permissions
                .extend(crate::permissions::interface(name));
        }
    }
    Ok(shape)
}

/// Refuses a binary whose `what` (`found`) is past `limit`.
fn over(
    verb: &'static str,
    what: &'static str,
    found: u64,
    limit: u64,
) -> Result<(), CompileError> {
    if found > limit {
        return Err(CompileError::TooLargeToCompile {
            verb,
            what,
            found,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module of `n` functions, each `(func)`, and one memory of `pages` pages.
    fn module(functions: u32, body_bytes: usize, pages: u64) -> Vec<u8> {
        use wasm_encoder::{
            CodeSection, Function, FunctionSection, MemorySection, MemoryType, Module, TypeSection,
        };
        let mut module = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut declared = FunctionSection::new();
        for _ in 0..functions {
            declared.function(0);
        }
        module.section(&declared);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: pages,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut code = CodeSection::new();
        for _ in 0..functions {
            let mut body = Function::new([]);
            for _ in 0..body_bytes {
                body.instructions().nop();
            }
            body.instructions().end();
            code.function(&body);
        }
        module.section(&code);
        module.finish()
    }

    #[test]
    fn a_binary_within_the_limits_is_read_without_compiling() {
        let shape = preflight(&module(10, 4, 1), &CompileLimits::default(), 1 << 30).unwrap();
        assert_eq!(shape.kind, FunctionKind::WasiCommand);
        assert_eq!(shape.functions, 10);
        assert_eq!(shape.memory_minimum_bytes, 65536);
        assert!(shape.needed_permissions.is_empty());
    }

    #[test]
    fn too_many_functions_too_much_code_or_too_large_a_function_is_refused() {
        let limits = CompileLimits {
            max_functions: 100,
            max_code_bytes: 4096,
            max_function_bytes: 512,
        };
        let many = preflight(&module(101, 0, 1), &limits, 1 << 30).unwrap_err();
        assert!(
            matches!(
                many,
                CompileError::TooLargeToCompile {
                    what: "functions",
                    found: 101,
                    limit: 100,
                    ..
                }
            ),
            "{many:?}"
        );
        assert!(many.to_string().contains("101 functions"), "{many}");
        let large = preflight(&module(1, 600, 1), &limits, 1 << 30).unwrap_err();
        assert!(
            matches!(large, CompileError::TooLargeToCompile { what: "bytes", .. }),
            "{large:?}"
        );
        let code = preflight(&module(20, 300, 1), &limits, 1 << 30).unwrap_err();
        assert!(
            matches!(
                code,
                CompileError::TooLargeToCompile {
                    what: "bytes of code",
                    ..
                }
            ),
            "{code:?}"
        );
    }

    #[test]
    fn a_memory_minimum_above_the_platform_limit_is_a_limit_error() {
        let e = preflight(&module(1, 0, 32768), &CompileLimits::default(), 1 << 30).unwrap_err();
        assert!(
            matches!(e, CompileError::MemoryMinimum { minimum, limit } if minimum == 2 << 30 && limit == 1 << 30),
            "{e:?}"
        );
        assert!(e.to_string().contains("1073741824"), "{e}");
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        for bytes in [
            &b"\0asm\x01\0\0\0\x03\xff\xff\xff\xff\x0f"[..],
            b"\0asm\x01\0\0\0",
            b"\0asm",
        ] {
            let _ = preflight(bytes, &CompileLimits::default(), 1 << 30);
        }
    }
}
