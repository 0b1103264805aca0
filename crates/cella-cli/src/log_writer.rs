//! Where the node's log goes: stderr, but a line that cannot be written is dropped, never an
//! error or a panic. Logging must not decide whether a request succeeds: a full disk under a
//! redirected stderr would otherwise break requests whose changes had already committed.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Log lines that could not be written since start-up (reported once writing works again).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// stderr, made lossy: see the module comment.
pub(crate) struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut stderr = std::io::stderr().lock();
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > 0
            && writeln!(
                stderr,
                "({dropped} log lines could not be written and were dropped)"
            )
            .is_ok()
        {
            DROPPED.fetch_sub(dropped, Ordering::Relaxed);
        }
        if stderr.write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_never_fails() {
        let mut writer = LossyStderr;
        assert_eq!(writer.write(b"a log line\n").unwrap(), 11);
        writer.flush().unwrap();
    }
}
