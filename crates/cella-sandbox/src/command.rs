//! Running a WASI preview 1 command: the request body is its stdin, its stdout is the response
//! body, its stderr is the invocation's log, and exit status ≠ 0 is an error.

use std::sync::Arc;

use bytes::Bytes;
use cella_core::Limits;
use wasmtime::{Engine, InstancePre, Linker, Store};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use crate::engine::Sandbox;
use crate::error::RunError;
use crate::limits::{GRACE, MemoryLimiter, Tripwires, arm, crossed_limit, guest_failure};
use crate::monitor::Monitor;
use crate::pipes::{LogPipe, LogTail, OutputPipe};
use crate::state::StateStore;

/// The per-invocation world of a command (the `T` of its `Store<T>`).
pub struct CommandState {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    pub(crate) monitor: Arc<Monitor>,
    pub(crate) state: Option<Arc<dyn StateStore>>,
}

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<CommandState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut CommandState| &mut s.wasi)?;
    // wasmtime-wasi turns a status of 126 or more into a bare error with a backtrace; a
    // function's exit status is the function's to choose, so every status ends the same way
    // (`exited with status N`, a negative N for statuses past i32::MAX).
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "proc_exit",
        |status: i32| -> wasmtime::Result<()> { Err(I32Exit(status).into()) },
    )?;
    linker.allow_shadowing(false);
    crate::state::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// What a command gets: stdin and arguments (argv[1..]; argv[0] is the function's name), and
/// what its permissions grant.
#[derive(Debug, Clone, Default)]
pub struct CommandInput {
    pub stdin: Bytes,
    pub args: Vec<String>,
    pub grants: Grants,
}

/// What one invocation is given beyond its input, by its function's permissions. Nothing by
/// default: no environment, no state.
#[derive(Clone, Default)]
pub struct Grants {
    /// Environment variables (only those the manifest names and the owner set).
    pub env: Vec<(String, String)>,
    /// The function's key-value state (`kv = true`).
    pub state: Option<Arc<dyn StateStore>>,
    /// Hosts outgoing HTTPS may reach (`wasi:http` components).
    pub http: std::collections::BTreeSet<cella_core::HttpHost>,
    /// The size of a private in-memory scratch directory (`scratch_mib`; components only).
    pub scratch_bytes: Option<u64>,
    /// Whose share of the CPU the invocation runs on (its tenant): not a permission, but
    /// handed over with them.
    pub cpu_share: crate::CpuShare,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values of environment variables are the owner's secrets: never printed.
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Grants")
            .field("env", &names)
            .field("state", &self.state.is_some())
            .field("http", &self.http)
            .field("scratch_bytes", &self.scratch_bytes)
            .field("cpu_share", &self.cpu_share)
            .finish()
    }
}

/// What a successful command produced.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub stdout: Bytes,
    pub log: LogTail,
}

impl Sandbox {
    /// Runs `pre` once in a fresh store under `limits`. Nothing of the store survives the call.
    pub async fn run_command(
        &self,
        pre: &InstancePre<CommandState>,
        program: &str,
        input: CommandInput,
        limits: &Limits,
    ) -> Result<CommandOutput, RunError> {
        let mut store = self.command_store(program, input, limits);
        let (pre, limits) = (pre.clone(), *limits);
        self.guests
            .run(async move {
                let (stdout, log, ()) = store
                    .run(&limits, async |store| {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
                        start.call_async(&mut *store, ()).await
                    })
                    .await?;
                Ok(CommandOutput { stdout, log })
            })
            .await
    }

    /// Instantiates `pre` ahead of its request, for comparisons with platforms that keep warm
    /// instances (PIE's "warm" mode). cella itself never reuses or pre-creates instances: each
    /// invocation gets a fresh one ([`Sandbox::run_command`]).
    pub async fn prepare_command(
        &self,
        pre: &InstancePre<CommandState>,
        program: &str,
        input: CommandInput,
        limits: &Limits,
    ) -> Result<PreparedCommand, RunError> {
        let mut store = self.command_store(program, input, limits);
        match pre.instantiate_async(&mut store.store).await {
            Ok(instance) => Ok(PreparedCommand {
                store,
                instance,
                limits: *limits,
            }),
            Err(e) => Err(crate::limits::guest_failure(e, LogTail::default())),
        }
    }

    /// A fresh store for a WASI command, armed with `limits`.
    pub(crate) fn command_store(
        &self,
        program: &str,
        input: CommandInput,
        limits: &Limits,
    ) -> CommandStore {
        let trip = Arc::new(Tripwires::default());
        let monitor = Arc::new(Monitor::default());
        let share = input.grants.cpu_share.clone();
        let stdout = OutputPipe::new(limits.output_bytes, trip.clone());
        let stderr = LogPipe::new(self.config.log_tail_bytes, monitor.clone());
        let mut argv = Vec::with_capacity(input.args.len() + 1);
        argv.push(program.to_owned());
        argv.extend(input.args);

        // Nothing is inherited from the host: no preopened directories, no sockets, and only
        // the environment the function's permissions grant.
        let wasi = self
            .guest_wasi()
            .stdin(MemoryInputPipe::new(input.stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&argv)
            .envs(&input.grants.env)
            .build_p1();
        let mut store = Store::new(
            &self.engine,
            CommandState {
                wasi,
                limiter: MemoryLimiter::new(limits, trip.clone()),
                monitor: monitor.clone(),
                state: input.grants.state,
            },
        );
        store.limiter(|s| &mut s.limiter);
        let counted = self.config.count_host_calls.then_some(monitor);
        arm(&mut store, limits, trip.clone(), counted, self.turns(share));
        CommandStore {
            store,
            stdout,
            stderr,
            trip,
        }
    }
}

/// An instance created before its request (see [`Sandbox::prepare_command`]).
pub struct PreparedCommand {
    store: CommandStore,
    instance: wasmtime::Instance,
    limits: Limits,
}

impl PreparedCommand {
    /// Runs the instance's `_start` once; the instance is gone afterwards.
    pub async fn run(self) -> Result<CommandOutput, RunError> {
        Ok(self.run_and_keep().await?.0)
    }

    /// Runs the instance's `_start` once and keeps the finished instance alive (to measure
    /// what a live instance holds); dropping the [`FinishedCommand`] frees it.
    pub async fn run_and_keep(mut self) -> Result<(CommandOutput, FinishedCommand), RunError> {
        let instance = self.instance;
        let (stdout, log, ()) = self
            .store
            .run(&self.limits, async |store| {
                let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
                start.call_async(&mut *store, ()).await
            })
            .await?;
        Ok((CommandOutput { stdout, log }, FinishedCommand(self.store)))
    }
}

/// An instance that has run, kept alive (see [`PreparedCommand::run_and_keep`]).
pub struct FinishedCommand(#[allow(dead_code)] CommandStore);

/// A command's store with its pipes and tripwires.
pub(crate) struct CommandStore {
    pub(crate) store: Store<CommandState>,
    stdout: OutputPipe,
    stderr: LogPipe,
    trip: Arc<Tripwires>,
}

impl CommandStore {
    /// Runs `guest` against the store under `limits`' deadline and turns how it ended into
    /// stdout, the log and `guest`'s result — or the error that names the limit it crossed or
    /// its exit status. Exiting with status 0 counts as success.
    pub(crate) async fn run<R: Default>(
        &mut self,
        limits: &Limits,
        guest: impl AsyncFnOnce(&mut Store<CommandState>) -> wasmtime::Result<R>,
    ) -> Result<(Bytes, LogTail, R), RunError> {
        let result = tokio::time::timeout(limits.timeout() + GRACE, guest(&mut self.store)).await;
        let log = self.stderr.tail();
        let status = match result {
            Err(_elapsed) => {
                return Err(RunError::Timeout {
                    limit_ms: limits.timeout_ms,
                    log,
                });
            }
            Ok(Ok(value)) => Ok((0, value)),
            Ok(Err(e)) => match e.downcast_ref::<I32Exit>() {
                Some(I32Exit(code)) => Ok((*code, R::default())),
                None => Err(e),
            },
        };
        let code = match status {
            Ok((0, value)) if !self.trip.output() => {
                return Ok((self.stdout.take(), log, value));
            }
            Ok((code, _)) => Ok(code),
            Err(e) => Err(e),
        };
        let log = crossed_limit(&self.trip, limits, log)?;
        Err(match code {
            Ok(code) => RunError::Exit { code, log },
            Err(e) => guest_failure(e, log),
        })
    }
}
