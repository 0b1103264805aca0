//! Where guests run: a Tokio runtime of their own, one worker thread per CPU turn. A guest
//! holds its worker for a whole time slice, so on the runtime that serves the API a few busy
//! guests would keep network and TLS tasks — a quiet tenant's request among them — waiting
//! for a worker (and Tokio polls for I/O only between tasks). Apart, the operating system
//! shares the cores between the API's threads and the guests' at once.

use std::future::Future;

use crate::error::RunError;
use crate::pipes::LogTail;

pub(crate) struct GuestExecutor {
    runtime: Option<tokio::runtime::Runtime>,
}

impl GuestExecutor {
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("cella-guest")
            // A guest's poll lasts a time slice. New invocations arrive in the runtime's
            // global queue, which workers otherwise look at only every 61 polls (more than
            // half a second here); timers and I/O likewise.
            .global_queue_interval(1)
            .event_interval(1)
            .enable_all()
            .build()?;
        Ok(GuestExecutor {
            runtime: Some(runtime),
        })
    }

    /// Runs `guest` on the guests' runtime and waits for it; dropping the returned future
    /// stops the guest (as dropping it in place would).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        guest: impl Future<Output = Result<T, RunError>> + Send + 'static,
    ) -> Result<T, RunError> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the guest runtime lives as long as the sandbox");
        let mut task = AbortOnDrop(runtime.spawn(guest));
        match (&mut task.0).await {
            Ok(result) => result,
            Err(e) => Err(RunError::Trap {
                message: format!("the invocation's task failed: {e}"),
                log: LogTail::default(),
            }),
        }
    }
}

impl Drop for GuestExecutor {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics on an async thread (where a sandbox may be
        // dropped): its threads are told to stop instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
