//! Reads inside kernel structures, only through offsets the agent took from this kernel's
//! BTF (there are no CO-RE relocations in Rust eBPF). Every read can fail; failure means
//! "unknown", never a guess.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::globals::{fd_pid_offsets, pids_limit_offsets};

#[inline(always)]
unsafe fn read_ptr(base: *const u8, off: u32) -> Option<*const u8> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const *const u8) }.ok().filter(|p| !p.is_null())
}

/// The pid (initial namespace) behind `fd` in the current task's fd table, if `fd` is a
/// pidfd the caller holds. Called at syscall entry, before the fd could go away.
#[inline(always)]
pub fn pidfd_target(fd: u64) -> i32 {
    let off = fd_pid_offsets();
    if off.valid == 0 {
        return 0;
    }
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Some(files) = read_ptr(task, off.task_files) else { return 0 };
        let Some(fdt) = read_ptr(files, off.files_fdt) else { return 0 };
        let max = bpf_probe_read_kernel(fdt.add(off.fdt_max_fds as usize) as *const u32).unwrap_or(0);
        if fd >= max as u64 {
            return 0;
        }
        let Some(fds) = read_ptr(fdt, off.fdt_fd) else { return 0 };
        let Some(file) = read_ptr(fds, (fd as u32).wrapping_mul(8)) else { return 0 };
        // Only a real pidfd's file leads to a struct pid (a /dev/null's inode does not).
        let Some(pid) = crate::risk::pidfd_pid(file) else { return 0 };
        bpf_probe_read_kernel(pid.add(off.pid_numbers_nr as usize) as *const i32).unwrap_or(0)
    }
}

/// Whether the current task's pids cgroup has reached pids.max. Only read on an EAGAIN
/// failure.
#[inline(always)]
pub fn pids_cgroup_at_limit() -> bool {
    let off = pids_limit_offsets();
    if off.valid == 0 {
        return false;
    }
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Some(cset) = read_ptr(task, off.task_cgroups) else { return false };
        let Some(css) = read_ptr(cset, off.css_set_subsys + 8 * off.pids_cgrp_id) else { return false };
        let counter = bpf_probe_read_kernel(css.add(off.pids_counter as usize) as *const i64).unwrap_or(0);
        let limit = bpf_probe_read_kernel(css.add(off.pids_limit as usize) as *const i64).unwrap_or(i64::MAX);
        counter >= limit
    }
}
