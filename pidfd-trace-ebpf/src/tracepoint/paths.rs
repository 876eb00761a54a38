//! Creation paths beyond clone and pidfd_open that a syscall tracepoint can see cheaply
//! (README "Every way a pidfd is born"): getsockopt(SO_PEERPIDFD), open_by_handle_at of a
//! pidfs handle, and an open of a `/proc/<pid>/fd/<n>` link that yields a new pidfd. Each
//! record's `pidfd`, `target_pid` and `pidfd_ino` come from the file the kernel installed in
//! the caller's fd table, never from the caller's memory alone.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use pidfd_trace_common::{EventKind, Mode};

use super::{arg, entry, mode_of, ret, save, take};
use crate::{
    emit,
    maps::{USES_IN_FLIGHT, is_open},
    risk::{installed_pidfd, new_pidfd},
    task::pidfd_target,
};

/// include/uapi/asm-generic/socket.h (the same on every architecture we build for).
const SOL_SOCKET: u32 = 1;
const SO_PEERPIDFD: u32 = 77;
/// include/linux/exportfs.h: the handle type pidfs (and kernfs) encode.
const FILEID_KERNFS: i32 = 0xfe;
/// include/uapi/linux/fcntl.h (6.17+): open_by_handle_at's "pidfs root" mount fd.
const FD_PIDFS_ROOT: i32 = -10002;
/// Offset of `handle_type` in `struct file_handle` (uapi: u32 handle_bytes, int handle_type).
const HANDLE_TYPE_OFF: u64 = 4;

// prototype: syscall:getsockopt/5: SYSCALL_DEFINE5(getsockopt, int, fd, int, level, int, optname, char __user *, optval, int __user *, optlen) [2.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_getsockopt")]
pub fn sys_enter_getsockopt(ctx: TracePointContext) -> u32 {
    // Hot path: every getsockopt on the host lands here; two direct context loads turn away
    // everything but SOL_SOCKET/SO_PEERPIDFD before any map or helper.
    if arg(&ctx, 1) as u32 != SOL_SOCKET || arg(&ctx, 2) as u32 != SO_PEERPIDFD {
        return 0;
    }
    // arg0 = the socket, uptr = optval (where the kernel writes the new pidfd's number).
    save(&entry(EventKind::SoPeerpidfd, 0, arg(&ctx, 0), 0, arg(&ctx, 3), 0));
    0
}

// prototype: syscall:getsockopt/5: SYSCALL_DEFINE5(getsockopt, int, fd, int, level, int, optname, char __user *, optval, int __user *, optlen) [2.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_getsockopt")]
pub fn sys_exit_getsockopt(ctx: TracePointContext) -> u32 {
    // Gated: one load of the gate, no map look-up, while no such call is in flight.
    if is_open(&USES_IN_FLIGHT) {
        exit_created(&ctx, EventKind::SoPeerpidfd);
    }
    0
}

// prototype: syscall:open_by_handle_at/3: SYSCALL_DEFINE3(open_by_handle_at, int, mountdirfd, struct file_handle __user *, handle, int, flags) [2.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_enter_open_by_handle_at")]
pub fn sys_enter_open_by_handle_at(ctx: TracePointContext) -> u32 {
    let mount_fd = arg(&ctx, 0);
    // The kernel reads the same field to pick the filesystem's decoder.
    let Ok(handle_type) = (unsafe { bpf_probe_read_user((arg(&ctx, 1) + HANDLE_TYPE_OFF) as *const i32) })
    else {
        return 0;
    };
    // A pidfs handle: kernfs-type, opened against a pidfd (any pidfd's mount is pidfs) or
    // FD_PIDFS_ROOT. cgroupfs handles share the type but not the mount.
    if handle_type != FILEID_KERNFS || (mount_fd as i32 != FD_PIDFS_ROOT && pidfd_target(mount_fd) == 0) {
        return 0;
    }
    save(&entry(EventKind::PidfsHandle, arg(&ctx, 2) & 0xffff_ffff, mount_fd, handle_type as u64, 0, 0));
    0
}

// prototype: syscall:open_by_handle_at/3: SYSCALL_DEFINE3(open_by_handle_at, int, mountdirfd, struct file_handle __user *, handle, int, flags) [2.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_open_by_handle_at")]
pub fn sys_exit_open_by_handle_at(ctx: TracePointContext) -> u32 {
    if is_open(&USES_IN_FLIGHT) {
        exit_created(&ctx, EventKind::PidfsHandle);
    }
    0
}

/// The exit of a creation path whose entry saved state: the new pidfd is resolved from the
/// caller's fd table (so_peerpidfd: the number the kernel wrote to optval, checked there).
#[inline(always)]
fn exit_created(ctx: &TracePointContext, kind: EventKind) {
    let id = bpf_get_current_pid_tgid();
    let Some(mut st) = take(id) else { return };
    if st.kind != kind as u8 {
        // A stale entry of another call (its exit was missed): dropped, as take() removed it.
        return;
    }
    let r = ret(ctx);
    let mut pidfd = -1;
    if r >= 0 {
        let fd = if kind == EventKind::SoPeerpidfd {
            unsafe { bpf_probe_read_user(st.uptr as *const i32) }.unwrap_or(-1) as i64
        } else {
            r
        };
        if fd >= 0
            && let Some(target) = installed_pidfd(fd as u64, &mut st.facts)
        {
            st.target_pid = target;
            pidfd = fd as i32;
        }
    }
    emit::finish_creation(ctx, &st, id, r, pidfd, mode_of(&st));
}

// prototype: syscall:openat/4: SYSCALL_DEFINE4(openat, int, dfd, const char __user *, filename, int, flags, umode_t, mode) [2.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    reopen_exit(&ctx);
    0
}

// prototype: syscall:openat2/4: SYSCALL_DEFINE4(openat2, int, dfd, const char __user *, filename, struct open_how __user *, how, size_t, usize) [5.6-7.1]
#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    reopen_exit(&ctx);
    0
}

/// openat/openat2 exit: HOT (every open on the host). No enter program and no map access
/// for anything but a new pidfd: a failed open returns at once, a successful one costs the
/// probe reads from the fd table to the file's operations (`new_pidfd`).
#[inline(always)]
fn reopen_exit(ctx: &TracePointContext) {
    let r = ret(ctx);
    if r < 0 {
        return;
    }
    // Everything but a new pidfd leaves here, before any clock read or stack set-up.
    let Some(p) = new_pidfd(r as u64) else { return };
    let mut st = entry(EventKind::Reopen, 0, 0, 0, 0, 0);
    st.target_pid = p.facts(&mut st.facts);
    emit::finish_creation(ctx, &st, bpf_get_current_pid_tgid(), r, r as i32, Mode::Tracepoint);
}
