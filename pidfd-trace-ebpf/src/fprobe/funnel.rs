//! The creation funnel (function modes, 6.9+; README "Every way a pidfd is born"): every
//! pidfd the kernel makes is a `pidfs_alloc_file()` file. Those made while a traced syscall is
//! in progress belong to it (creation.rs); the others are the paths no syscall tracepoint
//! sees, named here from where the kernel is:
//!
//! - `scm_pidfd`: `scm_pidfd_recv()` (pidfd_prepare → pidfs_alloc_file, then fd_install) under
//!   recvmsg/recvmmsg (6.5+; inlined into the unix socket code, so not probed itself);
//! - `fanotify`: `copy_event_to_user()` of a FAN_REPORT_PIDFD group under read/readv/pread*;
//! - `coredump`: `umh_coredump_setup()` (fs/coredump.c, 6.16+ for `%F`) allocates the
//!   crashing process's pidfd and `replace_fd()`s it to fd 3 of the helper it starts.
//!
//! The syscall in progress comes from the caller's saved registers (`bpf_task_pt_regs`), the
//! fd from `fd_install(fd, file)` of the same file on the same thread: the record's `pidfd`
//! is the number the kernel installed, its `target_pid` and `pidfd_ino` the file's own. A
//! prepared pidfd given back (`put_unused_fd`: the caller's buffer could not take it) makes
//! no record. A pidfd made anywhere else (io_uring workers, a kernel path this agent does not
//! know) is counted in `stats::FUNNEL_UNATTRIBUTED`.
//!
//! Cost: `fd_install` and `put_unused_fd` run for many files on the host; their programs read
//! one host-wide word and return while no funnel pidfd is pending, which is almost always.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_probe_read_kernel, generated},
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use pidfd_trace_common::{EnterState, EventKind, Mode, fn_params, stats};

use crate::{
    emit,
    globals::funnel_syscalls,
    maps::{
        ENTER_STATE, FUNNEL_IN_FLIGHT, FUNNEL_ON, FUNNEL_STATE, USES_IN_FLIGHT, bump_stat, gate_add, is_open,
    },
    risk::NewPidfd,
    task::in_compat_syscall,
    tracepoint::entry,
};

// Parameter count of umh_coredump_setup, whose fexit reads the return value after the last
// argument (the other programs here read arguments only).
const UMH_PARAMS: usize = fn_params::UMH_COREDUMP_SETUP;
/// fs/coredump.c COREDUMP_PIDFD_NUMBER: where the helper finds the pidfd.
const COREDUMP_PIDFD_NUMBER: i32 = 3;

/// `pidfs_alloc_file` made pidfd file `file` with no traced syscall in progress on this
/// thread (creation.rs): remember it until its `fd_install`, under the path it belongs to.
#[inline(always)]
pub fn untraced(file: u64, mode: Mode) {
    let id = bpf_get_current_pid_tgid();
    // A coredump helper being set up on this thread: its marker takes the file.
    if is_open(&FUNNEL_IN_FLIGHT)
        && let Some(st) = FUNNEL_STATE.get_ptr_mut(&id)
    {
        // SAFETY: the map value stays valid for this program run.
        let st: &mut EnterState = unsafe { &mut *st };
        if st.kind == EventKind::Coredump as u8 && st.arg0 == 0 {
            if let Some(p) = NewPidfd::of_file(file) {
                st.arg0 = file;
                st.mode = mode as u8;
                st.target_pid = p.facts(&mut st.facts);
            }
            return;
        }
    }
    if FUNNEL_ON.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    // A traced path of the uses gate (getsockopt SO_PEERPIDFD) reports its own pidfd.
    if is_open(&USES_IN_FLIGHT) && unsafe { ENTER_STATE.get(&id) }.is_some() {
        return;
    }
    let Some(kind) = syscall_path() else {
        bump_stat(stats::FUNNEL_UNATTRIBUTED);
        return;
    };
    let Some(p) = NewPidfd::of_file(file) else { return };
    let mut st = entry(kind, 0, file, 0, 0, 0);
    st.mode = mode as u8;
    st.target_pid = p.facts(&mut st.facts);
    pend(id, &st);
}

/// Stores `st` as this thread's pending funnel pidfd, opening the gate for a new entry.
#[inline(always)]
fn pend(id: u64, st: &EnterState) {
    let fresh = unsafe { FUNNEL_STATE.get(&id) }.is_none();
    if FUNNEL_STATE.insert(&id, st, 0).is_err() {
        bump_stat(stats::ENTER_FAILED);
    } else if fresh {
        gate_add(&FUNNEL_IN_FLIGHT, 1);
    }
}

/// Drops this thread's pending funnel pidfd, closing the gate for it.
#[inline(always)]
fn drop_pending(id: u64) {
    if FUNNEL_STATE.remove(&id).is_ok() {
        gate_add(&FUNNEL_IN_FLIGHT, u64::MAX);
    }
}

/// The path the syscall in progress names, from the caller's saved registers.
#[inline(always)]
fn syscall_path() -> Option<EventKind> {
    let f = funnel_syscalls();
    if f.valid == 0 {
        return None;
    }
    // SAFETY: the helper returns the task's saved user registers; probe read only.
    let nr = unsafe {
        let regs = generated::bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        if regs.is_null() {
            return None;
        }
        bpf_probe_read_kernel(regs.add(f.regs_nr as usize) as *const i32).ok()?
    };
    let compat = in_compat_syscall();
    let (scm, fan) = if compat { (&f.scm_compat, &f.fanotify_compat) } else { (&f.scm, &f.fanotify) };
    for s in scm {
        if *s >= 0 && *s == nr {
            return Some(EventKind::ScmPidfd);
        }
    }
    for s in fan {
        if *s >= 0 && *s == nr {
            return Some(EventKind::Fanotify);
        }
    }
    None
}

/// `fd_install(fd, file)`: if `file` is this thread's pending funnel pidfd, it now has its
/// number: the record goes out.
#[inline(always)]
fn installed<C: EbpfContext>(ctx: &C, fd: u64, file: u64) {
    if !is_open(&FUNNEL_IN_FLIGHT) {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(mut st) = (unsafe { FUNNEL_STATE.get(&id) }).copied() else { return };
    // The coredump helper's pidfd is placed by replace_fd, reported at its setup's exit.
    if st.arg0 != file || st.kind == EventKind::Coredump as u8 {
        return;
    }
    st.arg0 = 0;
    drop_pending(id);
    let mode = if st.mode == Mode::Kprobe as u8 { Mode::Kprobe } else { Mode::Fexit };
    emit::finish_creation(ctx, &st, id, 0, fd as u32 as i32, mode);
}

// prototype: fd_install/2: void fd_install(unsigned int fd, struct file *file) [2.6-7.1]
#[fentry(function = "fd_install")]
pub fn funnel_install_fentry(ctx: FEntryContext) -> u32 {
    installed(&ctx, ctx.arg::<u64>(0) & 0xffff_ffff, ctx.arg::<u64>(1));
    0
}

// prototype: fd_install/2: void fd_install(unsigned int fd, struct file *file) [2.6-7.1]
#[kprobe]
pub fn funnel_install_kprobe(ctx: ProbeContext) -> u32 {
    installed(&ctx, ctx.arg::<u64>(0).unwrap_or(0) & 0xffff_ffff, ctx.arg::<u64>(1).unwrap_or(0));
    0
}

/// `put_unused_fd`: a path gave its prepared fds back (its caller's buffer could not take
/// the pidfd number): no pidfd was installed, nothing to report.
#[inline(always)]
fn given_back() {
    if !is_open(&FUNNEL_IN_FLIGHT) {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    if let Some(st) = unsafe { FUNNEL_STATE.get(&id) }
        && st.kind != EventKind::Coredump as u8
    {
        drop_pending(id);
    }
}

// prototype: put_unused_fd/1: void put_unused_fd(unsigned int fd) [2.6-7.1]
#[fentry(function = "put_unused_fd")]
pub fn funnel_unused_fentry(_ctx: FEntryContext) -> u32 {
    given_back();
    0
}

// prototype: put_unused_fd/1: void put_unused_fd(unsigned int fd) [2.6-7.1]
#[kprobe]
pub fn funnel_unused_kprobe(_ctx: ProbeContext) -> u32 {
    given_back();
    0
}

/// The coredump helper's set-up begins on this thread: a marker that the pidfs allocation
/// under it fills in (`untraced`).
#[inline(always)]
fn coredump_begins(mode: Mode) {
    let mut st = entry(EventKind::Coredump, 0, 0, 0, 0, 0);
    st.mode = mode as u8;
    pend(bpf_get_current_pid_tgid(), &st);
}

/// The set-up ended with `ret`: on success the helper holds the pidfd at fd 3.
#[inline(always)]
fn coredump_ends<C: EbpfContext>(ctx: &C, ret: i64) {
    let id = bpf_get_current_pid_tgid();
    let Some(mut st) = (unsafe { FUNNEL_STATE.get(&id) }).copied() else { return };
    drop_pending(id);
    if st.kind != EventKind::Coredump as u8 || st.arg0 == 0 {
        // No pidfd under this set-up (`%F` not in core_pattern, or before 6.16).
        return;
    }
    st.arg0 = 0;
    let mode = if st.mode == Mode::Kprobe as u8 { Mode::Kprobe } else { Mode::Fexit };
    let pidfd = if ret == 0 { COREDUMP_PIDFD_NUMBER } else { -1 };
    emit::finish_creation(ctx, &st, id, ret, pidfd, mode);
}

// prototype: umh_coredump_setup/2: int umh_coredump_setup(struct subprocess_info *info, struct cred *new) [2.6-7.1]
#[fentry(function = "umh_coredump_setup")]
pub fn coredump_fentry(_ctx: FEntryContext) -> u32 {
    coredump_begins(Mode::Fexit);
    0
}

// prototype: umh_coredump_setup/2: int umh_coredump_setup(struct subprocess_info *info, struct cred *new) [2.6-7.1]
#[fexit(function = "umh_coredump_setup")]
pub fn coredump_fexit(ctx: FExitContext) -> u32 {
    // `int` return: only the low 32 bits are meaningful.
    coredump_ends(&ctx, ctx.arg::<u64>(UMH_PARAMS) as i32 as i64);
    0
}

// prototype: umh_coredump_setup/2: int umh_coredump_setup(struct subprocess_info *info, struct cred *new) [2.6-7.1]
#[kprobe]
pub fn coredump_kprobe(_ctx: ProbeContext) -> u32 {
    coredump_begins(Mode::Kprobe);
    0
}

// prototype: umh_coredump_setup/2: int umh_coredump_setup(struct subprocess_info *info, struct cred *new) [2.6-7.1]
#[kretprobe]
pub fn coredump_kret(ctx: RetProbeContext) -> u32 {
    coredump_ends(&ctx, ctx.ret::<u64>() as i32 as i64);
    0
}
