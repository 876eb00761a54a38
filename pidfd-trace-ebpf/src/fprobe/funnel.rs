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
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel,
        generated,
    },
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use pidfd_trace_common::{EnterState, EventKind, Mode, fn_params, stats};

use super::is_pidfd_name;
use crate::{
    emit,
    globals::funnel_syscalls,
    maps::{
        FUNNEL_IN_FLIGHT, FUNNEL_LAST, FUNNEL_ON, FUNNEL_STATE, USES_IN_FLIGHT, bump_stat, gate_add,
        in_flight, is_open,
    },
    risk::NewPidfd,
    task::in_compat_syscall,
    tracepoint::entry,
};

// Parameter counts of the functions whose fexit programs read the return value after the
// last argument (the other programs here read arguments only).
const UMH_PARAMS: usize = fn_params::UMH_COREDUMP_SETUP;
const ANON_PARAMS: usize = fn_params::ANON_INODE;
/// `EnterState::kind` of the kprobe-mode marker between an anon inode call's entry (which
/// sees the name) and its return (which sees the result); no event kind is 0.
const ANON_MARK: u8 = 0;
/// fs/coredump.c COREDUMP_PIDFD_NUMBER: where the helper finds the pidfd.
const COREDUMP_PIDFD_NUMBER: i32 = 3;

/// `pidfs_alloc_file` made pidfd file `file` with no traced syscall in progress on this
/// thread (creation.rs): remember it until its `fd_install`, under the path it belongs to.
#[inline(always)]
pub fn untraced<const HELPER: bool>(file: u64, mode: Mode) {
    let id = bpf_get_current_pid_tgid();
    if coredump_takes(id, file, mode) {
        return;
    }
    let Some(kind) = path_of::<HELPER>(id) else { return };
    let Some(p) = NewPidfd::of_file(file) else { return };
    let mut st = entry(kind, 0, file, 0, 0, 0);
    st.mode = mode as u8;
    st.target_pid = p.facts(&mut st.facts);
    pend(id, &st);
}

/// Before 6.9: `anon_inode_getfd("[pidfd]")` made and installed pidfd `fd` (fanotify's
/// `pidfd_create`, 5.15 – 6.4): reported at once, if no traced call on this thread made it.
#[inline(always)]
fn untraced_fd<C: EbpfContext, const HELPER: bool>(ctx: &C, fd: i32, mode: Mode) {
    if fd < 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: probe reads of the caller's fd table.
    let Some(file) = (unsafe { crate::risk::fd_file(task, fd as u64) }) else { return };
    // Before 5.12 anon_inode_getfd calls the exported anon_inode_getfile, whose funnel
    // program already reported (or counted) this file at the fd_install inside.
    if FUNNEL_LAST.get(0).copied() == Some(file as u64) {
        return;
    }
    let Some(kind) = path_of::<HELPER>(id) else { return };
    let Some(p) = NewPidfd::of_file(file as u64) else { return };
    let mut st = entry(kind, 0, 0, 0, 0, 0);
    st.mode = mode as u8;
    st.target_pid = p.facts(&mut st.facts);
    emit::finish_creation(ctx, &st, id, 0, fd, mode);
}

/// The path a pidfd made now on thread `id` belongs to: `None` when the funnel is off, when a
/// traced call of the thread makes it (its own programs report it: clone, pidfd_open,
/// getsockopt SO_PEERPIDFD), or when the syscall in progress names no path (counted).
#[inline(always)]
fn path_of<const HELPER: bool>(id: u64) -> Option<EventKind> {
    if !on() {
        return None;
    }
    if (in_flight() || is_open(&USES_IN_FLIGHT)) && crate::state::current(id).is_some() {
        return None;
    }
    let kind = syscall_path::<HELPER>();
    if kind.is_none() {
        bump_stat(stats::FUNNEL_UNATTRIBUTED);
    }
    kind
}

/// Whether the agent attached the funnel (`FUNNEL_ON`).
#[inline(always)]
fn on() -> bool {
    FUNNEL_ON.get(0).copied().unwrap_or(0) != 0
}

/// A coredump helper being set up on thread `id` (its marker pending): the marker takes pidfd
/// file `file`; true if so.
#[inline(always)]
fn coredump_takes(id: u64, file: u64, mode: Mode) -> bool {
    if !is_open(&FUNNEL_IN_FLIGHT) {
        return false;
    }
    let Some(st) = FUNNEL_STATE.get_ptr_mut(&id) else { return false };
    // SAFETY: the map value stays valid for this program run.
    let st: &mut EnterState = unsafe { &mut *st };
    if st.kind != EventKind::Coredump as u8 {
        return false;
    }
    // Several programs may see the same file (on anon-inode kernels the funnel's and the
    // hook's own): the first fills the marker in, and every one of them leaves the file to it.
    if st.arg0 == 0
        && let Some(p) = NewPidfd::of_file(file)
    {
        st.arg0 = file;
        st.mode = mode as u8;
        st.target_pid = p.facts(&mut st.facts);
    }
    true
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

/// The path the syscall in progress names, from the caller's saved registers: through the
/// `bpf_task_pt_regs` helper (5.15+; `HELPER`), else (x86_64 before 5.15) from the top of the
/// task's stack (task.rs `syscall_nr_from_stack`). Programs built without `HELPER` load on
/// kernels without the helper; the agent picks the variant (hooks.rs).
#[inline(always)]
fn syscall_path<const HELPER: bool>() -> Option<EventKind> {
    let f = funnel_syscalls();
    if f.valid == 0 || !user_task() {
        return None;
    }
    let nr = if HELPER {
        // SAFETY: the helper returns the task's saved user registers; probe read only.
        unsafe {
            let regs = generated::bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
            if regs.is_null() {
                return None;
            }
            bpf_probe_read_kernel(regs.add(f.regs_nr as usize) as *const i32).ok()?
        }
    } else {
        crate::task::syscall_nr_from_stack()?
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

/// include/linux/sched.h
const PF_IO_WORKER: u32 = 0x0000_0010;
const PF_KTHREAD: u32 = 0x0020_0000;

/// Whether the current task is a user process in a syscall of its own: not a kernel thread,
/// not an io_uring worker, and with an mm. A usermode helper before its exec (the coredump
/// helper's set-up) has zeroed saved registers, whose syscall number 0 is x86's read: it must
/// not be taken for one.
#[inline(always)]
fn user_task() -> bool {
    let ro = crate::globals::risk_offsets();
    if ro.valid == 0 {
        return false;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: probe reads of the current task.
    unsafe {
        let Ok(flags) = bpf_probe_read_kernel(task.add(ro.task_flags as usize) as *const u32) else {
            return false;
        };
        let mm = bpf_probe_read_kernel(task.add(ro.task_mm as usize) as *const u64).unwrap_or(0);
        flags & (PF_KTHREAD | PF_IO_WORKER) == 0 && mm != 0
    }
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
    if let Some(last) = FUNNEL_LAST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid for the program run.
        unsafe { *last = file };
    }
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

/// Before 6.9 only with the funnel on: whether an anon inode's name is "[pidfd]" (anon inodes
/// are also eventfd, timerfd, bpf maps, ...: one 8-byte probe read for each of those).
#[inline(always)]
fn anon_pidfd_name(name: u64) -> bool {
    on() && is_pidfd_name(name)
}

// The anon-inode programs come in two builds each: with the `bpf_task_pt_regs` helper
// (5.15+) and without it (`_stack`: x86_64 before 5.15); the agent attaches one (hooks.rs).

#[inline(always)]
fn anon_file_exit<const HELPER: bool>(ctx: &FExitContext) {
    if anon_pidfd_name(ctx.arg::<u64>(0)) {
        let file = ctx.arg::<u64>(ANON_PARAMS);
        if !super::is_err_ptr(file) {
            untraced::<HELPER>(file, Mode::Fexit);
        }
    }
}

#[inline(always)]
fn anon_fd_exit<const HELPER: bool>(ctx: &FExitContext) {
    if anon_pidfd_name(ctx.arg::<u64>(0)) {
        // `int` return: only the low 32 bits are meaningful.
        untraced_fd::<_, HELPER>(ctx, ctx.arg::<u64>(ANON_PARAMS) as i32, Mode::Fexit);
    }
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[fexit(function = "anon_inode_getfile")]
pub fn funnel_anon_file_fexit(ctx: FExitContext) -> u32 {
    anon_file_exit::<true>(&ctx);
    0
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[fexit(function = "anon_inode_getfile")]
pub fn funnel_anon_file_fexit_stack(ctx: FExitContext) -> u32 {
    anon_file_exit::<false>(&ctx);
    0
}

// prototype: anon_inode_getfd/4: int anon_inode_getfd(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[fexit(function = "anon_inode_getfd")]
pub fn funnel_anon_fd_fexit(ctx: FExitContext) -> u32 {
    anon_fd_exit::<true>(&ctx);
    0
}

// prototype: anon_inode_getfd/4: int anon_inode_getfd(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[fexit(function = "anon_inode_getfd")]
pub fn funnel_anon_fd_fexit_stack(ctx: FExitContext) -> u32 {
    anon_fd_exit::<false>(&ctx);
    0
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags), and anon_inode_getfd/4 with the same parameters [5.3-6.8]
/// kprobe mode: the name is only visible at entry: a marker for the return probe.
#[kprobe]
pub fn funnel_anon_kprobe(ctx: ProbeContext) -> u32 {
    if anon_pidfd_name(ctx.arg::<u64>(0).unwrap_or(0)) {
        let id = bpf_get_current_pid_tgid();
        // A coredump set-up's marker stays: its own programs take this file.
        if is_open(&FUNNEL_IN_FLIGHT)
            && matches!(unsafe { FUNNEL_STATE.get(&id) }, Some(st) if st.kind == EventKind::Coredump as u8)
        {
            return 0;
        }
        let mut st = entry(EventKind::Coredump, 0, 0, 0, 0, 0);
        st.kind = ANON_MARK;
        pend(id, &st);
    }
    0
}

/// kprobe mode: the return of an anon inode call whose entry saw "[pidfd]"; true if so (the
/// marker is gone).
#[inline(always)]
fn anon_marked() -> bool {
    if !is_open(&FUNNEL_IN_FLIGHT) {
        return false;
    }
    let id = bpf_get_current_pid_tgid();
    match unsafe { FUNNEL_STATE.get(&id) } {
        Some(st) if st.kind == ANON_MARK => {
            drop_pending(id);
            true
        }
        _ => false,
    }
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[kretprobe]
pub fn funnel_anon_file_kret(ctx: RetProbeContext) -> u32 {
    let file = ctx.ret::<u64>();
    if anon_marked() && !super::is_err_ptr(file) {
        untraced::<true>(file, Mode::Kprobe);
    }
    0
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[kretprobe]
pub fn funnel_anon_file_kret_stack(ctx: RetProbeContext) -> u32 {
    let file = ctx.ret::<u64>();
    if anon_marked() && !super::is_err_ptr(file) {
        untraced::<false>(file, Mode::Kprobe);
    }
    0
}

// prototype: anon_inode_getfd/4: int anon_inode_getfd(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[kretprobe]
pub fn funnel_anon_fd_kret(ctx: RetProbeContext) -> u32 {
    if anon_marked() {
        untraced_fd::<_, true>(&ctx, ctx.ret::<u64>() as i32, Mode::Kprobe);
    }
    0
}

// prototype: anon_inode_getfd/4: int anon_inode_getfd(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[kretprobe]
pub fn funnel_anon_fd_kret_stack(ctx: RetProbeContext) -> u32 {
    if anon_marked() {
        untraced_fd::<_, false>(&ctx, ctx.ret::<u64>() as i32, Mode::Kprobe);
    }
    0
}

// The coredump helper's pidfd before 6.9 (stable backports of the `%F` pidfd to 5.10 and
// 6.1: umh_coredump_setup → pidfd_prepare → anon_inode_getfile("[pidfd]"), put_unused_fd,
// replace_fd to 3). Only while a set-up is pending somewhere (the gate) is a name read.

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[fexit(function = "anon_inode_getfile")]
pub fn coredump_anon_fexit(ctx: FExitContext) -> u32 {
    if is_open(&FUNNEL_IN_FLIGHT) && is_pidfd_name(ctx.arg::<u64>(0)) {
        let file = ctx.arg::<u64>(ANON_PARAMS);
        if !super::is_err_ptr(file) {
            coredump_takes(bpf_get_current_pid_tgid(), file, Mode::Fexit);
        }
    }
    0
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
/// kprobe mode: the name is only visible at entry: the set-up's marker notes it (`arg1`).
#[kprobe]
pub fn coredump_anon_kprobe(ctx: ProbeContext) -> u32 {
    if !is_open(&FUNNEL_IN_FLIGHT) || !is_pidfd_name(ctx.arg::<u64>(0).unwrap_or(0)) {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if let Some(st) = FUNNEL_STATE.get_ptr_mut(&id) {
        // SAFETY: the map value stays valid for this program run.
        let st: &mut EnterState = unsafe { &mut *st };
        if st.kind == EventKind::Coredump as u8 {
            st.arg1 = 1;
        }
    }
    0
}

// prototype: anon_inode_getfile/4: struct file *anon_inode_getfile(const char *name, const struct file_operations *fops, void *priv, int flags) [5.3-6.8]
#[kretprobe]
pub fn coredump_anon_kret(ctx: RetProbeContext) -> u32 {
    if !is_open(&FUNNEL_IN_FLIGHT) {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let noted = matches!(unsafe { FUNNEL_STATE.get(&id) }, Some(st) if st.kind == EventKind::Coredump as u8 && st.arg1 == 1);
    let file = ctx.ret::<u64>();
    if noted && !super::is_err_ptr(file) {
        coredump_takes(id, file, Mode::Kprobe);
    }
    0
}
