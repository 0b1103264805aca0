//! The node's compiler: one thread that compiles one function at a time, behind a bounded
//! queue, at a lower CPU priority than guests. Compiling is the most expensive thing a tenant
//! can ask of a node; one at a time bounds its memory, the queue bounds how much waits, and
//! the priority keeps other tenants' invocations fast while a large component (or a bomb that
//! passed the limits) compiles. wasmtime's parallel compilation runs on rayon's pool, whose
//! threads get the same priority.

use std::sync::mpsc::{SyncSender, TrySendError};

use crate::error::CompileError;

/// The nice value of compiling threads (guests run at 0): under contention they get about a
/// tenth of a core's time, and all of any idle core.
const COMPILE_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct CompilerLane {
    jobs: SyncSender<Job>,
    queue: usize,
}

impl CompilerLane {
    /// Starts the compiler thread with room for `queue` waiting compilations.
    pub(crate) fn start(queue: usize) -> Result<Self, CompileError> {
        let (jobs, waiting) = std::sync::mpsc::sync_channel::<Job>(queue);
        std::thread::Builder::new()
            .name("cella-compile".into())
            .spawn(move || {
                lower_priority();
                // Ends when the sandbox (the sender) is dropped. Never joined: the last
                // handle on the sandbox may be dropped by a job on this very thread.
                for job in waiting {
                    job();
                    return_freed_memory();
                }
            })
            .map_err(CompileError::engine)?;
        // wasmtime compiles a module's functions in parallel on rayon's global pool.
        let _ = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("cella-compile-{i}"))
            .start_handler(|_| lower_priority())
            .build_global();
        Ok(CompilerLane { jobs, queue })
    }

    /// Runs `work` on the compiler thread once the compilations before it are done, or
    /// refuses at once if the queue is full.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CompileError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(CompileError::CompilerBusy { queued: self.queue });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(CompileError::Engine(
                    "the compiler thread has stopped".into(),
                ));
            }
        }
        result
            .await
            .map_err(|_| CompileError::Engine("the compiler thread failed".into()))
    }
}

/// Lowers the calling thread's CPU priority to [`COMPILE_NICE`] (Linux applies a nice value
/// per thread). Best effort: where it is refused, compiling still works, at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), COMPILE_NICE)
    {
        tracing::debug!("could not lower the compiler's priority: {e}");
    }
}

/// Hands the memory a compilation freed back to the system. glibc's allocator keeps freed
/// memory in its arenas (one per thread that allocated, rayon's workers included): without
/// this, a node that compiled a large module keeps its peak for good.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_freed_memory() {
    // SAFETY: `malloc_trim` has no preconditions: it only releases free memory of the
    // allocator's arenas, under the allocator's own locks, and may be called at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}
