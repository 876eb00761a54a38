//! The pidfd creation step: pidfs_alloc_file (6.9+), or anon_inode_getfile / anon_inode_getfd
//! with the name "[pidfd]" (5.3 – 6.8). Which ones the running kernel has is the agent's
//! decision (BTF and kallsyms), not this file's.
use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use pidfd_trace_common::{Mode, fn_params, hints};

use super::{current_call, is_err_ptr, mark, release::born};

// Parameter counts: the `// prototype:` line of each program below.
const PIDFS_PARAMS: usize = fn_params::PIDFS_ALLOC_FILE;
const ANON_PARAMS: usize = fn_params::ANON_INODE;

// prototype: pidfs_alloc_file/2: struct file *pidfs_alloc_file(struct pid *pid, unsigned int flags) [6.9-7.1]
#[fexit(function = "pidfs_alloc_file")]
pub fn pidfs_fexit(ctx: FExitContext) -> u32 {
    pidfs_made(ctx.arg::<u64>(PIDFS_PARAMS), Mode::Fexit);
    0
}

// prototype: pidfs_alloc_file/2: struct file *pidfs_alloc_file(struct pid *pid, unsigned int flags) [6.9-7.1]
#[kretprobe]
pub fn pidfs_kret(ctx: RetProbeContext) -> u32 {
    pidfs_made(ctx.ret::<u64>(), Mode::Kprobe);
    0
}

/// Every pidfd is made here on 6.9+ (clone, pidfd_open, SO_PEERPIDFD, SCM_PIDFD, fanotify,
/// the coredump helper): one made outside a traced syscall goes to the funnel.
#[inline(always)]
fn pidfs_made(file: u64, mode: Mode) {
    let ok = !is_err_ptr(file);
    if !created(ok, mode) && ok {
        // pidfs kernels (6.9+) all have bpf_task_pt_regs.
        super::funnel::untraced::<true>(file, mode);
    }
    if ok {
        born(file);
    }
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[fexit(function = "anon_inode_getfile")]
pub fn anon_file_fexit(ctx: FExitContext) -> u32 {
    if is_pidfd_name(ctx.arg::<u64>(0)) {
        let file = ctx.arg::<u64>(ANON_PARAMS);
        created(!is_err_ptr(file), Mode::Fexit);
        if !is_err_ptr(file) {
            born(file);
        }
    }
    0
}

// prototype: anon_inode_getfd/4: int anon_inode_getfd(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[fexit(function = "anon_inode_getfd")]
pub fn anon_fd_fexit(ctx: FExitContext) -> u32 {
    if is_pidfd_name(ctx.arg::<u64>(0)) {
        // `int` return: only the low 32 bits are meaningful.
        let fd = ctx.arg::<u64>(ANON_PARAMS) as i32;
        created(fd >= 0, Mode::Fexit);
        born_fd(fd);
    }
    0
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags), and anon_inode_getfd/4 with the same parameters [5.3-6.8]
/// kprobe mode: the name is only visible at entry, the result only at return.
#[kprobe]
pub fn anon_kprobe(ctx: ProbeContext) -> u32 {
    if is_pidfd_name(ctx.arg::<u64>(0).unwrap_or(0))
        && let Some(st) = current_call()
    {
        st.hints |= hints::ANON_PENDING;
    }
    0
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[kretprobe]
pub fn anon_file_kret(ctx: RetProbeContext) -> u32 {
    let file = ctx.ret::<u64>();
    if anon_returned(!is_err_ptr(file)) && !is_err_ptr(file) {
        born(file);
    }
    0
}

// prototype: anon_inode_getfd/4: int anon_inode_getfd(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[kretprobe]
pub fn anon_fd_kret(ctx: RetProbeContext) -> u32 {
    let fd = ctx.ret::<u64>() as i32;
    if anon_returned(fd >= 0) {
        born_fd(fd);
    }
    0
}

/// kprobe mode: the return of an anon inode call whose entry saw "[pidfd]"; true if so.
#[inline(always)]
fn anon_returned(ok: bool) -> bool {
    if let Some(st) = current_call()
        && st.hints & hints::ANON_PENDING != 0
    {
        st.hints &= !hints::ANON_PENDING;
        mark(st, if ok { hints::PIDFD_CREATED } else { hints::PIDFD_CREATE_FAILED }, Mode::Kprobe);
        return true;
    }
    false
}

/// anon_inode_getfd returns the fd it installed, not the file: find the file in the caller's
/// fd table (the fd was installed before the function returned).
#[inline(always)]
fn born_fd(fd: i32) {
    if fd < 0 {
        return;
    }
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    if let Some(file) = unsafe { crate::risk::fd_file(task, fd as u64) } {
        born(file as u64);
    }
}

/// Marks the traced call in progress on this thread, if any (then true).
#[inline(always)]
fn created(ok: bool, mode: Mode) -> bool {
    if let Some(st) = current_call() {
        mark(st, if ok { hints::PIDFD_CREATED } else { hints::PIDFD_CREATE_FAILED }, mode);
        return true;
    }
    false
}

/// Whether a kernel string is "[pidfd]" (anon inodes are also epoll, eventfd, ...). Only
/// reached while a pidfd call is in flight somewhere.
#[inline(always)]
fn is_pidfd_name(name: u64) -> bool {
    crate::maps::in_flight() && super::is_pidfd_name(name)
}
