//! The event ring buffer and the kernel-side log channel, as the pipeline reads them: each is
//! a pollable fd (for tokio's `AsyncFd`) and a way to drain what is ready.
use std::os::fd::{AsRawFd, RawFd};

use aya::maps::{MapData, RingBuf};

/// The `EVENTS` ring buffer: records the kernel programs wrote, oldest first.
pub struct EventRing(pub(super) RingBuf<MapData>);

impl EventRing {
    /// Hands the next ready record to `f` (its bytes are valid only during the call) and
    /// returns what `f` returned; `None` once the ring is empty.
    pub fn next_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let item = self.0.next()?;
        Some(f(&item))
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Messages the kernel programs log through aya-log (e.g. a full outcome map).
pub struct KernelLog(pub(super) aya_log::EbpfLogger<&'static dyn log::Log>);

impl KernelLog {
    /// Writes every pending message to the agent's logger.
    pub fn flush(&mut self) {
        self.0.flush();
    }
}

impl AsRawFd for KernelLog {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
