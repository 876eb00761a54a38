//! Pidfd closes: the pidfd file's release, run on its LAST close (every fd and every other
//! reference gone), for every pidfd on the host. Which function that is depends on the kernel
//! (the agent picks from BTF/kallsyms, never from the version):
//! - before 6.9: `pidfd_release` (kernel/fork.c), the `.release` of `pidfd_fops`;
//! - 6.9 – 7.0: pidfs files have no `.release`: `__fput`, every file's last close, filtered to
//!   pidfs files by one `f_op` comparison before anything else;
//! - 7.1+: `pidfs_file_release` (fs/pidfs.c).
//!
//! Each close bumps a per-CPU counter; when a creation hook remembered the file's creation
//! time (`PIDFD_BORN`, keyed by the `struct file` pointer), the lifetime goes into the
//! histogram buckets and the entry is removed.
use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use pidfd_trace_common::closes;

use crate::{
    globals::{file_f_op_off, pidfs_fops},
    maps::{CLOSE_ON, PIDFD_BORN, bump_close},
};

// prototype: pidfd_release/2: static int pidfd_release(struct inode *inode, struct file *file) [5.3-6.8]
#[fentry(function = "pidfd_release")]
pub fn pidfd_rel_fentry(ctx: FEntryContext) -> u32 {
    released(ctx.arg::<u64>(1));
    0
}

// prototype: pidfd_release/2: static int pidfd_release(struct inode *inode, struct file *file) [5.3-6.8]
#[kprobe]
pub fn pidfd_rel_kprobe(ctx: ProbeContext) -> u32 {
    released(ctx.arg::<u64>(1).unwrap_or(0));
    0
}

// prototype: pidfs_file_release/2: static int pidfs_file_release(struct inode *inode, struct file *file) [7.1-]
#[fentry(function = "pidfs_file_release")]
pub fn pidfs_rel_fentry(ctx: FEntryContext) -> u32 {
    released(ctx.arg::<u64>(1));
    0
}

// prototype: pidfs_file_release/2: static int pidfs_file_release(struct inode *inode, struct file *file) [7.1-]
#[kprobe]
pub fn pidfs_rel_kprobe(ctx: ProbeContext) -> u32 {
    released(ctx.arg::<u64>(1).unwrap_or(0));
    0
}

// prototype: __fput/1: static void __fput(struct file *file) [6.9-7.0, every file's last close]
#[fentry(function = "__fput")]
pub fn fput_fentry(ctx: FEntryContext) -> u32 {
    let file = ctx.arg::<u64>(0);
    if is_pidfs_file(file) {
        released(file);
    }
    0
}

// prototype: __fput/1: static void __fput(struct file *file) [6.9-7.0, every file's last close]
#[kprobe]
pub fn fput_kprobe(ctx: ProbeContext) -> u32 {
    let file = ctx.arg::<u64>(0).unwrap_or(0);
    if is_pidfs_file(file) {
        released(file);
    }
    0
}

/// Whether `file` is a pidfs file: one read of `file->f_op` against `pidfs_file_operations`
/// (kallsyms). Runs for every file closed on the host, so nothing else happens first; without
/// the address it falls back to the pidfs superblock magic.
#[inline(always)]
fn is_pidfs_file(file: u64) -> bool {
    let fops = pidfs_fops();
    if fops != 0 {
        let f_op = unsafe { bpf_probe_read_kernel((file + file_f_op_off() as u64) as *const u64) };
        return f_op == Ok(fops);
    }
    unsafe { crate::risk::pidfd_pid(file as *const u8) }.is_some()
}

/// The pidfd file `file` is being released.
#[inline(always)]
fn released(file: u64) {
    bump_close(closes::CLOSED, 1);
    let Some(born) = (unsafe { PIDFD_BORN.get(&file) }).copied() else { return };
    let _ = PIDFD_BORN.remove(&file);
    let life = unsafe { bpf_ktime_get_boot_ns() }.saturating_sub(born);
    bump_close(closes::TIMED, 1);
    bump_close(closes::SUM_NS, life);
    let mut slot = closes::BUCKET0 + closes::BUCKETS_NS.len() as u32;
    let mut i = closes::BUCKETS_NS.len();
    // From the top bound down, so the last bound that still holds `life` wins; unrolled.
    while i > 0 {
        i -= 1;
        if life <= closes::BUCKETS_NS[i] {
            slot = closes::BUCKET0 + i as u32;
        }
    }
    bump_close(slot, 1);
}

/// A creation hook made pidfd file `file` (a `struct file *`): remember when, if a release
/// hook is attached to take it out again.
#[inline(always)]
pub fn born(file: u64) {
    if file == 0 || CLOSE_ON.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if PIDFD_BORN.insert(&file, &now, 0).is_err() {
        bump_close(closes::BORN_FULL, 1);
    }
}
