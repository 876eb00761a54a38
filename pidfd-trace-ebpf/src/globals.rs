//! Values the agent fills in at load time from the running kernel (tracepoint format files,
//! BTF). Rust eBPF has no CO-RE relocations, so nothing here may be trusted at its default.
use pidfd_trace_common::{FdPidOffsets, PidsLimitOffsets, RiskOffsets};

/// Byte offsets of the syscall tracepoint fields, from
/// `/sys/kernel/tracing/events/syscalls/sys_enter_*/format`: every sys_enter record places its
/// n-th argument at `TP_ARG0_OFF + 8 * n` and sys_exit its `ret` at `TP_RET_OFF` (checked by the
/// agent against each format file before it loads us).
#[unsafe(no_mangle)]
static TP_ARG0_OFF: u32 = 16;
#[unsafe(no_mangle)]
static TP_RET_OFF: u32 = 16;

/// task_struct → css_set → pids_cgroup offsets, from BTF; `valid == 0` when unknown.
#[unsafe(no_mangle)]
static PIDS_LIMIT_OFFSETS: PidsLimitOffsets = PidsLimitOffsets {
    task_cgroups: 0,
    css_set_subsys: 0,
    pids_cgrp_id: 0,
    pids_counter: 0,
    pids_limit: 0,
    valid: 0,
};

#[inline(always)]
pub fn tp_arg_off(n: usize) -> usize {
    unsafe { core::ptr::read_volatile(&TP_ARG0_OFF) as usize + 8 * n }
}

#[inline(always)]
pub fn tp_ret_off() -> usize {
    unsafe { core::ptr::read_volatile(&TP_RET_OFF) as usize }
}

#[inline(always)]
pub fn pids_limit_offsets() -> PidsLimitOffsets {
    unsafe { core::ptr::read_volatile(&PIDS_LIMIT_OFFSETS) }
}

/// Caller fd table → struct pid offsets, from BTF; `valid == 0` when unknown.
#[unsafe(no_mangle)]
static FD_PID_OFFSETS: FdPidOffsets = FdPidOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_fd: 0,
    fdt_max_fds: 0,
    file_private_data: 0,
    file_f_inode: 0,
    inode_i_private: 0,
    via_inode: 0,
    pid_numbers_nr: 0,
    valid: 0,
};

#[inline(always)]
pub fn fd_pid_offsets() -> FdPidOffsets {
    unsafe { core::ptr::read_volatile(&FD_PID_OFFSETS) }
}

/// Target-fact offsets (risk.rs), from BTF; `valid == 0` when unknown.
#[unsafe(no_mangle)]
static RISK_OFFSETS: RiskOffsets = RiskOffsets {
    pid_tasks: 0,
    task_pid_links: 0,
    task_flags: 0,
    task_exit_state: 0,
    task_mm: 0,
    task_signal: 0,
    signal_flags: 0,
    signal_nr_threads: 0,
    task_real_cred: 0,
    task_cred: 0,
    cred_uid: 0,
    cred_euid: 0,
    cred_suid: 0,
    cred_fsuid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    file_dentry: 0,
    dentry_name: 0,
    inode_i_mode: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    sb_s_magic: 0,
    sb_s_dev: 0,
    file_mnt: 0,
    dentry_parent: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    task_last_siginfo: 0,
    siginfo_code: 0,
    kn_parent: 0,
    kn_name: 0,
    inode_i_nlink: 0,
    valid: 0,
};

#[inline(always)]
pub fn risk_offsets() -> RiskOffsets {
    unsafe { core::ptr::read_volatile(&RISK_OFFSETS) }
}
