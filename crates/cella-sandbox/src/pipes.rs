//! In-memory stdio for guests: a response pipe that refuses to grow past the output limit, and
//! a log pipe that keeps only the tail of what the guest wrote (a log flood costs the guest
//! time, never the platform memory).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::limits::Tripwires;
use crate::monitor::{Monitor, MonitorReport};

/// Largest single write a guest is offered; bigger writes are split by WASI.
const WRITE_BUDGET: usize = 64 * 1024;

/// A stdout that collects up to `cap` bytes and traps the guest on the first write beyond it.
#[derive(Clone)]
pub(crate) struct OutputPipe {
    buf: Arc<Mutex<BytesMut>>,
    cap: usize,
    trip: Arc<Tripwires>,
}

impl OutputPipe {
    pub(crate) fn new(cap: u64, trip: Arc<Tripwires>) -> Self {
        OutputPipe {
            buf: Arc::default(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            trip,
        }
    }

    pub(crate) fn take(&self) -> Bytes {
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(PoisonError::into_inner)).freeze()
    }

    fn append(&self, bytes: &[u8]) -> bool {
        let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        if buf.len().saturating_add(bytes.len()) > self.cap {
            self.trip.trip_output();
            return false;
        }
        buf.extend_from_slice(bytes);
        true
    }
}

/// An invocation's log: the last bytes the guest wrote to stderr, how many earlier bytes were
/// dropped, and what the monitor saw (its denials are entries of the log).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LogTail {
    pub bytes: Bytes,
    pub dropped: u64,
    /// Boxed: errors carry the log, and most are never looked at this closely.
    pub monitor: Box<MonitorReport>,
}

impl LogTail {
    /// The tail as text (invalid UTF-8 replaced) followed by the host's denials, for error
    /// messages and logs.
    pub fn to_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut out = if self.dropped > 0 {
            format!("[{} earlier bytes dropped]\n{text}", self.dropped)
        } else {
            text.into_owned()
        };
        for denial in &self.monitor.denials {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!(
                "[cella] denied ({}): {}\n",
                denial.by, denial.detail
            ));
        }
        if self.monitor.denials_not_logged > 0 {
            out.push_str(&format!(
                "[cella] {} more denials not shown\n",
                self.monitor.denials_not_logged
            ));
        }
        out
    }
}

impl fmt::Debug for LogTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogTail({:?})", self.to_text())
    }
}

/// A stderr that keeps the last `keep` bytes.
#[derive(Clone)]
pub(crate) struct LogPipe {
    inner: Arc<Mutex<(VecDeque<u8>, u64)>>,
    keep: usize,
    monitor: Arc<Monitor>,
}

impl LogPipe {
    /// A log that keeps `keep` bytes of stderr and the entries of `monitor`.
    pub(crate) fn new(keep: usize, monitor: Arc<Monitor>) -> Self {
        LogPipe {
            inner: Arc::default(),
            keep,
            monitor,
        }
    }

    pub(crate) fn tail(&self) -> LogTail {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (ring, dropped) = &*inner;
        LogTail {
            bytes: ring.iter().copied().collect::<Vec<u8>>().into(),
            dropped: *dropped,
            monitor: Box::new(self.monitor.report()),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (ring, dropped) = &mut *inner;
        let bytes = if bytes.len() > self.keep {
            *dropped += (bytes.len() - self.keep) as u64;
            &bytes[bytes.len() - self.keep..]
        } else {
            bytes
        };
        let overflow = (ring.len() + bytes.len()).saturating_sub(self.keep);
        ring.drain(..overflow);
        *dropped += overflow as u64;
        ring.extend(bytes);
    }
}

/// One place for the WASI stream plumbing shared by both pipes.
trait Sink: Clone + Send + Sync + 'static {
    /// Accepts `bytes` whole, or refuses them (the guest is then trapped).
    fn accept(&self, bytes: &[u8]) -> bool;
}

impl Sink for OutputPipe {
    fn accept(&self, bytes: &[u8]) -> bool {
        self.append(bytes)
    }
}

impl Sink for LogPipe {
    fn accept(&self, bytes: &[u8]) -> bool {
        self.append(bytes);
        true
    }
}

/// Adapts a [`Sink`] to WASI's output-stream traits.
struct Stream<S>(S);

const REFUSED: &str = "output limit exceeded";

#[wasmtime_wasi::async_trait]
impl<S: Sink> OutputStream for Stream<S> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.0.accept(&bytes) {
            Ok(())
        } else {
            Err(StreamError::trap(REFUSED))
        }
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl<S: Sink> Pollable for Stream<S> {
    async fn ready(&mut self) {}
}

impl<S: Sink> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.0.accept(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(io::Error::other(REFUSED)))
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

macro_rules! stdout_stream {
    ($ty:ty) => {
        impl IsTerminal for $ty {
            fn is_terminal(&self) -> bool {
                false
            }
        }
        impl StdoutStream for $ty {
            fn p2_stream(&self) -> Box<dyn OutputStream> {
                Box::new(Stream(self.clone()))
            }
            fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
                Box::new(Stream(self.clone()))
            }
        }
    };
}
stdout_stream!(OutputPipe);
stdout_stream!(LogPipe);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_pipe_keeps_the_tail_and_counts_what_it_dropped() {
        let log = LogPipe::new(8, Arc::default());
        log.append(b"hello ");
        log.append(b"world!");
        let tail = log.tail();
        assert_eq!(&tail.bytes[..], b"o world!");
        assert_eq!(tail.dropped, 4);
        log.append(b"0123456789AB");
        let tail = log.tail();
        assert_eq!(&tail.bytes[..], b"456789AB");
        assert_eq!(tail.dropped, 16);
    }

    #[test]
    fn output_pipe_refuses_past_its_cap_and_trips() {
        let trip = Arc::new(Tripwires::default());
        let out = OutputPipe::new(10, trip.clone());
        assert!(out.append(b"12345"));
        assert!(out.append(b"67890"));
        assert!(!trip.output());
        assert!(!out.append(b"x"));
        assert!(trip.output());
        assert_eq!(&out.take()[..], b"1234567890");
    }
}
