//! The process-wide engine, its linkers and the epoch ticker that drives deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine};

use wasmtime_wasi::WasiCtxBuilder;

use crate::clock::{
    GuardedClocks, GuestMonotonicClock, GuestWallClock, SystemTimeSource, TimeSource,
};
use crate::command::CommandState;
use crate::error::CompileError;
use crate::http::HttpState;

/// How often the engine's epoch advances. A running guest is checked against its deadline, and
/// yields to other invocations on the same thread, once per tick.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings for the shared engine.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Maximum WebAssembly stack per invocation, in bytes.
    pub max_wasm_stack: usize,
    /// Bytes of a guest's stderr kept as the invocation's log (the tail is kept).
    pub log_tail_bytes: usize,
    /// Instances that may exist at once: the size of the instance pool, and so the node's
    /// concurrency limit.
    pub instances: u32,
    /// The largest linear memory any function may have (the platform's memory maximum).
    pub max_memory_bytes: u64,
    /// Bytes of each linear memory kept mapped between invocations and zeroed with `memset`
    /// instead of being unmapped: a guest that touches less than this pays no page faults
    /// for a fresh instance. Costs up to this much resident memory per memory slot ever used
    /// (see [`SandboxConfig::idle_guest_memory_bound`]); what a guest touched beyond it is
    /// handed back to the kernel as soon as the invocation ends.
    pub keep_resident_bytes: usize,
    /// Count every host call in the monitor (on in every node). Off only to measure what the
    /// counting costs (`cella bench monitor`): refusals are enforced and logged either way.
    pub count_host_calls: bool,
    /// How outgoing HTTPS is made (roots, address rules, bounds).
    pub outgoing: crate::OutgoingConfig,
    /// How much code one function may bring to the compiler, checked before compiling.
    pub compile: crate::CompileLimits,
    /// Compilations waiting for the node's compiler at most (one runs at a time); more are
    /// refused as busy.
    pub compile_queue: usize,
    /// Guests that run WebAssembly at once (CPU turns, shared fairly between tenants; see
    /// `cpu.rs`); 0: one per core.
    pub cpu_turns: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_wasm_stack: 512 * 1024,
            log_tail_bytes: 16 * 1024,
            instances: 128,
            max_memory_bytes: 1 << 30,
            keep_resident_bytes: 16 << 20,
            count_host_calls: true,
            outgoing: crate::OutgoingConfig::default(),
            compile: crate::CompileLimits::default(),
            compile_queue: 16,
            cpu_turns: 0,
        }
    }
}

/// Linear memories the pool holds per instance: a component may bring one for its adapter.
const MEMORIES_PER_INSTANCE: u32 = 2;
/// Tables the pool holds per instance.
const TABLES_PER_INSTANCE: u32 = 4;
/// Bytes of each table, and of each async stack, kept resident between invocations.
const TABLE_AND_STACK_KEEP_RESIDENT: usize = 64 * 1024;

impl SandboxConfig {
    /// The most guest memory the node keeps resident while no invocation runs, however
    /// invocations used it before: every memory slot keeps at most `keep_resident_bytes`
    /// (the rest is handed back when its invocation ends), and every table and stack slot
    /// 64 KiB. In bytes: `instances × (2 × keep_resident_bytes + 5 × 64 KiB)`.
    pub fn idle_guest_memory_bound(&self) -> u64 {
        let n = u64::from(self.instances.max(1));
        let slot_keeps = |slots: u64, bytes: usize| slots.saturating_mul(bytes as u64);
        slot_keeps(
            n * u64::from(MEMORIES_PER_INSTANCE),
            self.keep_resident_bytes,
        )
        .saturating_add(slot_keeps(
            n * u64::from(TABLES_PER_INSTANCE + 1),
            TABLE_AND_STACK_KEEP_RESIDENT,
        ))
    }

    /// The most guest memory the node holds while invocations run: every instance at the
    /// platform's memory maximum, on top of what idle slots keep.
    pub fn busy_guest_memory_bound(&self) -> u64 {
        u64::from(self.instances.max(1))
            .saturating_mul(self.max_memory_bytes)
            .saturating_add(self.idle_guest_memory_bound())
    }
}

/// A pooling allocator sized by `config`: instances reuse pre-reserved slots, memory images
/// are mapped copy-on-write, and slots are reset (zeroed) between invocations, so every
/// invocation still starts from a clean state (invariant 4) without fresh mappings.
fn pooling(config: &SandboxConfig) -> wasmtime::PoolingAllocationConfig {
    let n = config.instances.max(1);
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    // A component instance holds several core instances (the guest, the WASI adapter, shims).
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(4))
        .total_memories(n.saturating_mul(MEMORIES_PER_INSTANCE))
        .total_tables(n.saturating_mul(TABLES_PER_INSTANCE))
        .total_stacks(n)
        .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(config.keep_resident_bytes)
        .table_keep_resident(TABLE_AND_STACK_KEEP_RESIDENT)
        .async_stack_keep_resident(TABLE_AND_STACK_KEEP_RESIDENT)
        // What an invocation touched beyond the kept-resident bytes goes back to the kernel
        // when it ends. Batching these unmappings (fewer TLB shootdowns) let one tenant's
        // 1 GiB guests leave gigabytes held by a node at rest until enough slots queued up;
        // a guest within `keep_resident_bytes` queues nothing, so small guests pay nothing.
        .decommit_batch_size(1)
        // Where the kernel can say which pages an instance wrote (Linux 6.7+), reset only
        // those: otherwise the first `keep_resident_bytes` are reset whole — a copy of the
        // image — and a plug-in holding a large table would cost its size per invocation.
        .pagemap_scan(wasmtime::Enabled::Auto)
        // Prefer reusing a slot already warm over touching a cold one (see
        // `idle_guest_memory_bound`: every slot ever used keeps its resident bytes).
        .max_unused_warm_slots(n.min(32));
    pool
}

/// One per process: the shared engine and the linkers for each kind of function.
pub struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) command_linker: wasmtime::Linker<CommandState>,
    pub(crate) http_linker: wasmtime::component::Linker<HttpState>,
    pub(crate) config: SandboxConfig,
    pub(crate) clocks: Arc<GuardedClocks>,
    pub(crate) outgoing_denied: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) outgoing: Arc<crate::outgoing::OutgoingClient>,
    compiler: crate::compiler::CompilerLane,
    cpu: Arc<crate::cpu::CpuScheduler>,
    pub(crate) guests: crate::executor::GuestExecutor,
    _ticker: EpochTicker,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, CompileError> {
        Self::with_time_source(config, Box::new(SystemTimeSource::default()))
    }

    /// A sandbox whose guests read time from `source` through the guarded clocks (tests play
    /// a lying host with it).
    pub fn with_time_source(
        config: SandboxConfig,
        source: Box<dyn TimeSource>,
    ) -> Result<Self, CompileError> {
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .wasm_component_model(true)
            .max_wasm_stack(config.max_wasm_stack)
            .parallel_compilation(true)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling(
                &config,
            )));
        let engine = Engine::new(&wasm).map_err(CompileError::engine)?;
        let command_linker = crate::command::linker(&engine).map_err(CompileError::engine)?;
        let http_linker = crate::http::linker(&engine).map_err(CompileError::engine)?;
        let cpu_turns = match config.cpu_turns {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            turns => turns,
        };
        let cpu = crate::cpu::CpuScheduler::new(cpu_turns);
        let ticker = EpochTicker::start(engine.clone(), cpu.clone());
        let outgoing = crate::outgoing::OutgoingClient::new(config.outgoing.clone());
        let compiler = crate::compiler::CompilerLane::start(config.compile_queue.max(1))?;
        Ok(Sandbox {
            engine,
            command_linker,
            http_linker,
            config,
            clocks: GuardedClocks::new(source),
            outgoing_denied: Arc::default(),
            outgoing,
            compiler,
            cpu,
            // One thread more than turns: a new invocation, or a guest back from I/O, finds a
            // thread free at once instead of waiting for a running guest's slice to end.
            guests: crate::executor::GuestExecutor::start(cpu_turns.min(64) + 1)
                .map_err(CompileError::engine)?,
            _ticker: ticker,
        })
    }

    /// An invocation's place in line for the CPU, on `share`.
    pub(crate) fn turns(&self, share: crate::CpuShare) -> crate::cpu::Turns {
        crate::cpu::Turns::new(self.cpu.clone(), share)
    }

    /// [`Sandbox::compile`] on the node's compiler thread: one compilation at a time, at a
    /// lower priority than guests, after those queued before it; refused with
    /// [`CompileError::CompilerBusy`] when the queue is full.
    /// Returns the code and how long compiling it took (waiting excluded).
    pub async fn compile_queued(
        self: &Arc<Self>,
        bytes: bytes::Bytes,
    ) -> Result<(crate::Compiled, Duration), CompileError> {
        // Refused at once, before waiting for a turn: a binary over the limits costs nothing.
        self.preflight(&bytes)?;
        let sandbox = self.clone();
        self.compiler
            .run(move || {
                let started = std::time::Instant::now();
                sandbox
                    .compile_checked(&bytes)
                    .map(|compiled| (compiled, started.elapsed()))
            })
            .await?
    }

    /// Outgoing HTTP requests guests attempted and were refused.
    pub fn outgoing_denied(&self) -> u64 {
        self.outgoing_denied.load(Ordering::Relaxed)
    }

    /// The wall-clock time through the guarded clock guests read: what the node itself should
    /// write into receipts and records, so a host that turns its clock back or ahead cannot
    /// date them as it likes.
    pub fn wall_time(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + self.clocks.wall_now()
    }

    /// How often the host's clocks were corrected because they went backwards or jumped.
    pub fn clock_corrections(&self) -> u64 {
        self.clocks.corrections()
    }

    /// The WASI context every guest starts from: nothing inherited from the host, no network,
    /// and the guarded clocks.
    pub(crate) fn guest_wasi(&self) -> WasiCtxBuilder {
        let mut builder = WasiCtxBuilder::new();
        crate::http::deny_network(&mut builder)
            .wall_clock(GuestWallClock(self.clocks.clone()))
            .monotonic_clock(GuestMonotonicClock(self.clocks.clone()));
        builder
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated thread, and reclaims CPU
/// turns held through long host calls; stopped on drop.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, cpu: Arc<crate::cpu::CpuScheduler>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cella-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    cpu.reclaim();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
