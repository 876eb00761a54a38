//! Values the agent fills in at load time from the running kernel (tracepoint format files,
//! BTF). Rust eBPF has no CO-RE relocations, so nothing here may be trusted at its default.
use pidfd_trace_common::{
    FdPidOffsets, FunnelSyscalls, NewFdOffsets, PidsLimitOffsets, RiskOffsets, TruthOffsets,
};

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
    css_parent: 0,
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
pub fn pids_limit_offsets() -> &'static PidsLimitOffsets {
    opaque(&PIDS_LIMIT_OFFSETS)
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

/// The openat exit's offsets (risk.rs `new_pidfd`), from BTF; `valid == 0` when unknown.
#[unsafe(no_mangle)]
static NEW_FD_OFFSETS: NewFdOffsets =
    NewFdOffsets { file_f_op: 0, file_f_mode: 0, files_fdtab: 0, files_fd_array: 0, valid: 0 };

#[inline(always)]
pub fn new_fd_offsets() -> &'static NewFdOffsets {
    opaque(&NEW_FD_OFFSETS)
}

#[inline(always)]
pub fn fd_pid_offsets() -> &'static FdPidOffsets {
    opaque(&FD_PID_OFFSETS)
}

/// Offsets behind the facts a caller cannot forge (file kinds, pid namespaces, process
/// name), from BTF; `valid == 0` when unknown.
#[unsafe(no_mangle)]
static TRUTH_OFFSETS: TruthOffsets = TruthOffsets {
    file_dentry: 0,
    dentry_name: 0,
    dentry_parent: 0,
    inode_sb: 0,
    inode_mode: 0,
    sb_magic: 0,
    sb_root: 0,
    proc_pid_from_inode: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
    task_group_leader: 0,
    task_comm: 0,
    task_thread_pid: 0,
    task_ti_status: 0,
    ti_status_valid: 0,
    cset_dfl_cgrp: 0,
    cgroup_kn: 0,
    kn_name: 0,
    kn_valid: 0,
    task_stack: 0,
    regs_cs: 0,
    pt_regs_size: 0,
    regs_di: 0,
    regs_orig_ax: 0,
    regs_valid: 0,
    valid: 0,
};

/// A reference, not a copy: the struct is large and the programs that use it are near the
/// 512-byte BPF stack limit. The pointer goes through a volatile read so the compiler cannot
/// fold the fields to their defaults (the agent overrides them at load).
#[inline(always)]
pub fn truth_offsets() -> &'static TruthOffsets {
    opaque(&TRUTH_OFFSETS)
}

/// A reference to one of the offset statics that the compiler cannot see through, so each
/// field is loaded where it is used (a field the agent overrides at load is never folded to
/// its default), and only the fields used are loaded. A volatile read of the whole struct
/// instead copied every field on each call: tens of loads and stores per helper, the largest
/// part of the exit programs' own run time (perf, 2026-12-01).
#[inline(always)]
fn opaque<T>(r: &'static T) -> &'static T {
    let p: *const T = r;
    // SAFETY: a valid pointer to a static; the volatile read only hides its value.
    unsafe { &*core::ptr::read_volatile(&p) }
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
    mount_mnt_root: 0,
    task_last_siginfo: 0,
    siginfo_code: 0,
    kn_parent: 0,
    kn_name: 0,
    inode_i_nlink: 0,
    valid: 0,
};

#[inline(always)]
pub fn risk_offsets() -> &'static RiskOffsets {
    opaque(&RISK_OFFSETS)
}

/// Address of `pidfs_file_operations` from /proc/kallsyms (0 when unknown) and the offset of
/// `file.f_op` from BTF: the `__fput` release hook (6.9 – 7.0) compares one pointer per
/// closed file against it. With 0 it falls back to the pidfs magic (three reads).
#[unsafe(no_mangle)]
static PIDFS_FOPS: u64 = 0;
#[unsafe(no_mangle)]
static FILE_F_OP_OFF: u32 = 0;

#[inline(always)]
pub fn pidfs_fops() -> u64 {
    unsafe { core::ptr::read_volatile(&PIDFS_FOPS) }
}

#[inline(always)]
pub fn file_f_op_off() -> u32 {
    unsafe { core::ptr::read_volatile(&FILE_F_OP_OFF) }
}

/// The creation funnel's syscall numbers and the saved-register offset of the syscall number
/// (fprobe/funnel.rs); `valid == 0` when unknown.
#[unsafe(no_mangle)]
static FUNNEL_SYSCALLS: FunnelSyscalls = FunnelSyscalls::NONE;

#[inline(always)]
pub fn funnel_syscalls() -> &'static FunnelSyscalls {
    opaque(&FUNNEL_SYSCALLS)
}
