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
        prefetch_next(&item);
        Some(f(&item))
    }
}

/// Asks the CPU for the cache lines of the record that would follow `rec` in the ring, while
/// this one is decoded: the kernel wrote them on another CPU, and the first load of each
/// was the largest single cost of the event path under a storm (`perf`, BENCHMARKS.md). A
/// hint only: past the last record it touches ring memory that holds nothing yet (the data
/// pages are mapped twice in a row, and a prefetch never faults).
#[inline(always)]
fn prefetch_next(rec: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};

        use pidfd_trace_common::EventRecord;
        // The next record's data: after this one, padded to 8 bytes, and the 8-byte header
        // of the next (include/uapi/linux/bpf.h BPF_RINGBUF_HDR_SZ).
        let next = rec.as_ptr().wrapping_add(rec.len().next_multiple_of(8) + 8);
        // The fields every record's decoding reads: the fixed part and the two comms, the
        // cgroup name and the target facts (the path names, read only for pidfd_getfd, not).
        const LINES: [usize; 6] = [
            0,
            64,
            std::mem::offset_of!(EventRecord, comm),
            std::mem::offset_of!(EventRecord, thread_comm),
            std::mem::offset_of!(EventRecord, cgroup_name),
            std::mem::offset_of!(EventRecord, facts),
        ];
        for off in LINES {
            // SAFETY: a prefetch is a hint; it reads nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(off).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = rec;
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
