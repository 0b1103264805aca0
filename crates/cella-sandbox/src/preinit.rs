//! Pre-initialisation: run a module's initialiser once, then snapshot its memories and globals
//! into a new module whose data segments hold that state (what `wizer` does; the snapshotting
//! is `wasmtime-wizer`'s, the running is ours). Every instance of the result starts where the
//! initialiser ended, and the engine maps its memory image copy-on-write, so that state costs
//! an instance only the pages it writes.
//!
//! The initialiser runs like an invocation: in a fresh store of the shared engine, with no
//! files, environment or network, under the limits given, its stderr kept as a log. Whatever it
//! computes (including clocks or random numbers it reads) is frozen into the image.

use bytes::Bytes;
use cella_core::Limits;
use wasmtime::{Instance, InstancePre, Module, Store};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use crate::command::{CommandInput, CommandState};
use crate::engine::Sandbox;
use crate::error::{CompileError, RunError};
use crate::pipes::LogTail;

/// The export a pre-initialisable module runs first.
pub const INITIALIZER: &str = "wizer-initialize";

/// Whether the snapshot keeps the initialiser exported, so it can be pre-initialised again
/// (a plug-in whose image a function's code is later added to), or drops it (a final image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initializer {
    Keep,
    Drop,
}

/// A snapshot and what the initialiser logged.
#[derive(Debug)]
pub struct Preinitialized {
    pub wasm: Vec<u8>,
    pub log: LogTail,
}

#[derive(Debug, thiserror::Error)]
pub enum PreinitError {
    #[error("the module cannot be pre-initialised: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("pre-initialisation failed: {0}")]
    Run(#[from] RunError),
    #[error("pre-initialisation failed: the initialiser exited before it finished")]
    Exited { log: LogTail },
}

impl PreinitError {
    /// What the initialiser wrote to stderr, if it ran.
    pub fn log(&self) -> Option<&LogTail> {
        match self {
            PreinitError::Run(e) => Some(e.log()),
            PreinitError::Exited { log } => Some(log),
            _ => None,
        }
    }
}

/// A module made ready to be pre-initialised, again and again with different inputs (a
/// plug-in that each function's code is added to): instrumented, compiled and linked once.
#[derive(Clone)]
pub struct Preinitializer {
    wasm: std::sync::Arc<[u8]>,
    pre: InstancePre<CommandState>,
}

impl Sandbox {
    /// Instruments and compiles `wasm` for pre-initialisation. CPU-heavy: callers on an async
    /// runtime should run it on a blocking thread.
    pub fn preinitializer(&self, wasm: &[u8]) -> Result<Preinitializer, PreinitError> {
        let (_, instrumented) = wizer(Initializer::Keep)
            .instrument(wasm)
            .map_err(|e| PreinitError::Unsupported(format!("{e:#}")))?;
        let module = Module::new(&self.engine, &instrumented)
            .map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
        let exported = module.exports().any(|e| {
            e.name() == INITIALIZER
                && e.ty()
                    .func()
                    .is_some_and(|f| f.params().len() == 0 && f.results().len() == 0)
        });
        if !exported {
            return Err(PreinitError::Unsupported(format!(
                "it does not export a function `{INITIALIZER}` that takes and returns nothing"
            )));
        }
        // The instrumentation exports every global; a snapshot can hold only numbers.
        let reference_global = module.exports().any(|e| {
            e.ty()
                .global()
                .is_some_and(|g| !(g.content().is_num() || g.content().is_v128()))
        });
        if reference_global {
            return Err(PreinitError::Unsupported(
                "it has a global of reference type, which a snapshot cannot hold".into(),
            ));
        }
        let pre = self
            .command_linker
            .instantiate_pre(&module)
            .map_err(|e| CompileError::UnsupportedImport(format!("{e:#}")))?;
        Ok(Preinitializer {
            wasm: wasm.into(),
            pre,
        })
    }

    /// Runs `preinitializer`'s [`INITIALIZER`] with `stdin` under `limits` in a fresh store,
    /// and returns the snapshot.
    pub async fn preinitialize(
        &self,
        preinitializer: &Preinitializer,
        stdin: Bytes,
        limits: &Limits,
        initializer: Initializer,
    ) -> Result<Preinitialized, PreinitError> {
        let wizer = wizer(initializer);
        // Parsing again is cheap and gives the snapshot what it needs to rewrite the module;
        // the compiled code is the one made before.
        let (context, _) = wizer
            .instrument(&preinitializer.wasm)
            .map_err(|e| PreinitError::Unsupported(format!("{e:#}")))?;
        // Initialisers get no grants: an image must not capture the environment or state.
        let input = CommandInput {
            stdin,
            ..CommandInput::default()
        };
        let pre = &preinitializer.pre;
        let (_stdout, log, snapshot) = self
            .command_store("pre-initialisation", input, limits)
            .run(limits, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                let init = instance.get_typed_func::<(), ()>(&mut *store, INITIALIZER)?;
                init.call_async(&mut *store, ()).await?;
                let mut state = Snapshotting { store, instance };
                Ok(Some(wizer.snapshot(&context, &mut state).await?))
            })
            .await?;
        match snapshot {
            Some(wasm) => Ok(Preinitialized { wasm, log }),
            None => Err(PreinitError::Exited { log }),
        }
    }
}

fn wizer(initializer: Initializer) -> Wizer {
    let mut wizer = Wizer::new();
    wizer
        .init_func(INITIALIZER)
        .keep_init_func(initializer == Initializer::Keep);
    wizer
}

/// What the snapshot reads: the initialised instance's exported globals and memories (the
/// instrumentation exports them all).
struct Snapshotting<'a> {
    store: &'a mut Store<CommandState>,
    instance: Instance,
}

impl InstanceState for Snapshotting<'_> {
    async fn global_get(&mut self, name: &str, _type_hint: ValType) -> SnapshotVal {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("the instrumentation exports every global");
        match global.get(&mut *self.store) {
            wasmtime::Val::I32(x) => SnapshotVal::I32(x),
            wasmtime::Val::I64(x) => SnapshotVal::I64(x),
            wasmtime::Val::F32(x) => SnapshotVal::F32(x),
            wasmtime::Val::F64(x) => SnapshotVal::F64(x),
            wasmtime::Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            // Refused before anything ran (see `preinitialize`).
            other => unreachable!("global of a type the snapshot cannot hold: {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("the instrumentation exports every memory");
        contents(memory.data(&*self.store))
    }
}
