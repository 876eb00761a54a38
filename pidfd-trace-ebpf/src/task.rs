//! Reads inside kernel structures, only through offsets the agent took from this kernel's
//! BTF (there are no CO-RE relocations in Rust eBPF). Every read can fail; failure means
//! "unknown", never a guess.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated};
use pidfd_trace_common::{FdPidOffsets, TruthOffsets};

use crate::globals::{fd_pid_offsets, pids_limit_offsets, truth_offsets};

#[inline(always)]
unsafe fn read_ptr(base: *const u8, off: u32) -> Option<*const u8> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const *const u8) }.ok().filter(|p| !p.is_null())
}

/// `super_block.s_magic` of pidfs (include/uapi/linux/magic.h PID_FS_MAGIC, 6.9+).
const PID_FS_MAGIC: u64 = 0x5049_4446;
/// `super_block.s_magic` of procfs (PROC_SUPER_MAGIC).
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// The dentry name anon_inode_getfile() gives a pidfd before 6.9 (`anon_inode:[pidfd]`).
const ANON_PIDFD_NAME: [u8; 8] = *b"[pidfd]\0";
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
/// Deepest pid namespace nesting the kernel allows (MAX_PID_NS_LEVEL is 32).
const PID_NS_LEVEL_MASK: u32 = 31;
/// How many fds of the caller a clone exit scans for the child's pidfd when the number in
/// user memory is not it. The kernel installs the lowest free fd, so a real pidfd lies
/// beyond this only in a process holding this many fds open.
pub const PIDFD_SCAN_FDS: u32 = 32;

/// The current task's open file array and its size.
#[inline(always)]
unsafe fn fd_array(off: &FdPidOffsets) -> Option<(*const u8, u32)> {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files = read_ptr(task, off.task_files)?;
        let fdt = read_ptr(files, off.files_fdt)?;
        let max = bpf_probe_read_kernel(fdt.add(off.fdt_max_fds as usize) as *const u32).ok()?;
        Some((read_ptr(fdt, off.fdt_fd)?, max))
    }
}

/// The `struct pid` behind `file` if it is a `/proc/<pid>` directory (what pidfd_send_signal
/// accepts besides a pidfd), with the offsets the agent passed in.
#[inline(always)]
pub unsafe fn proc_dir_pid_of(file: *const u8) -> Option<*const u8> {
    let off = fd_pid_offsets();
    let t = truth_offsets();
    if off.valid == 0 || t.valid == 0 {
        return None;
    }
    unsafe { proc_dir_pid(file, &off, t) }
}

/// The struct pid of a `/proc/<pid>` directory (what pidfd_send_signal also accepts, through
/// tgid_pidfd_to_pid): a procfs directory right below its mount's root whose proc_inode
/// carries a pid. Other proc files and directories yield None.
#[inline(always)]
unsafe fn proc_dir_pid(file: *const u8, off: &FdPidOffsets, t: &TruthOffsets) -> Option<*const u8> {
    unsafe {
        let inode = read_ptr(file, off.file_f_inode)?;
        let sb = read_ptr(inode, t.inode_sb)?;
        let magic = bpf_probe_read_kernel(sb.add(t.sb_magic as usize) as *const u64).ok()?;
        let mode = bpf_probe_read_kernel(inode.add(t.inode_mode as usize) as *const u16).ok()?;
        if magic != PROC_SUPER_MAGIC || mode & S_IFMT != S_IFDIR {
            return None;
        }
        let dentry = read_ptr(file, t.file_dentry)?;
        let parent = read_ptr(dentry, t.dentry_parent)?;
        let root = read_ptr(sb, t.sb_root)?;
        if parent != root {
            return None;
        }
        let slot = inode.wrapping_offset(t.proc_pid_from_inode as isize) as *const *const u8;
        bpf_probe_read_kernel(slot).ok().filter(|p| !p.is_null())
    }
}

/// `pid`'s number in pid namespace `level` (0 if it has none there), with the offsets the
/// agent passed in.
#[inline(always)]
pub fn pid_nr(pid: *const u8, level: u32) -> i32 {
    let t = truth_offsets();
    if t.valid == 0 {
        return 0;
    }
    // SAFETY: probe reads only.
    unsafe { pid_nr_at(pid, level, t) }
}

/// `pid->numbers[level].nr`, or 0 when the pid is not visible at that level.
#[inline(always)]
unsafe fn pid_nr_at(pid: *const u8, level: u32, t: &TruthOffsets) -> i32 {
    unsafe {
        let Ok(own) = bpf_probe_read_kernel(pid.add(t.pid_level as usize) as *const u32) else { return 0 };
        let level = level & PID_NS_LEVEL_MASK;
        if level > own {
            return 0;
        }
        let at = t.pid_numbers as usize + (level * t.upid_size) as usize + t.upid_nr as usize;
        bpf_probe_read_kernel(pid.add(at) as *const i32).unwrap_or(0)
    }
}

/// The pid behind `fd` in the current task's fd table, in the initial namespace and in
/// `level` (the caller's namespace; 0 means "not needed"). `proc_dirs` also resolves
/// `/proc/<pid>` directories (pidfd_send_signal accepts them). `checked` tells whether the
/// kernel could check the file's kind at all.
#[derive(Clone, Copy, Default)]
pub struct FdTarget {
    pub host: i32,
    pub ns: i32,
    pub checked: bool,
}

#[inline(always)]
pub fn fd_target(fd: u64, proc_dirs: bool, level: u32) -> FdTarget {
    let off = fd_pid_offsets();
    let t = truth_offsets();
    let mut out = FdTarget::default();
    if off.valid == 0 || t.valid == 0 {
        return out;
    }
    unsafe {
        let Some((fds, max)) = fd_array(&off) else { return out };
        out.checked = true;
        if fd >= max as u64 {
            return out;
        }
        let Some(file) = read_ptr(fds, (fd as u32).wrapping_mul(8)) else { return out };
        let pid = match crate::risk::pidfd_pid(file) {
            Some(p) => Some(p),
            None if proc_dirs => proc_dir_pid(file, &off, t),
            None => None,
        };
        let Some(pid) = pid else { return out };
        out.host = bpf_probe_read_kernel(pid.add(off.pid_numbers_nr as usize) as *const i32).unwrap_or(0);
        if level > 0 {
            out.ns = pid_nr_at(pid, level, t);
        }
    }
    out
}

/// The pid (initial namespace) behind `fd` in the current task's fd table, if `fd` is a
/// pidfd the caller holds; 0 otherwise or when the kernel's shapes are unknown. Called at
/// syscall entry, before the fd could go away.
#[allow(dead_code)] // the stable entry point for other programs (issue 13's use facts)
#[inline(always)]
pub fn pidfd_target(fd: u64) -> i32 {
    fd_target(fd, false, 0).host
}

/// The fd of the caller's pidfd for the task with host pid `child`: `hint` (the number the
/// kernel wrote to user memory, which the caller may since have changed) if that fd is it,
/// else the lowest such fd among the first `PIDFD_SCAN_FDS`. None when there is none or the
/// kernel's shapes are unknown.
#[inline(always)]
pub fn installed_pidfd(hint: i64, child: i32) -> Option<i32> {
    let off = fd_pid_offsets();
    let t = truth_offsets();
    if off.valid == 0 || t.valid == 0 || child <= 0 {
        return None;
    }
    unsafe {
        let (fds, max) = fd_array(&off)?;
        let is_child = |fd: u32| -> bool {
            let Some(file) = read_ptr(fds, fd.wrapping_mul(8)) else { return false };
            let Some(pid) = crate::risk::pidfd_pid(file) else { return false };
            bpf_probe_read_kernel(pid.add(off.pid_numbers_nr as usize) as *const i32) == Ok(child)
        };
        if hint >= 0 && hint < max as i64 && is_child(hint as u32) {
            return Some(hint as i32);
        }
        if off.via_inode != 0 {
            scan_for_pidfd::<true>(fds, max, child, off, t)
        } else {
            scan_for_pidfd::<false>(fds, max, child, off, t)
        }
    }
}

/// A kernel word at `base + off`, 0 when unreadable (the helper zero-fills on failure): no
/// branch, so a loop over these stays cheap for the verifier (old kernels under emulation
/// took minutes over a loop with a branch per read).
#[inline(always)]
unsafe fn word(base: u64, off: u32) -> u64 {
    let mut v = 0u64;
    unsafe {
        generated::bpf_probe_read_kernel(
            (&mut v as *mut u64).cast(),
            8,
            (base.wrapping_add(u64::from(off))) as *const core::ffi::c_void,
        );
    }
    v
}

/// The lowest fd among the first `PIDFD_SCAN_FDS` that is a pidfd of host pid `child`.
/// One loop per kernel family (`VIA_INODE`: pidfs, else anon inode), two branches per fd.
#[inline(always)]
unsafe fn scan_for_pidfd<const VIA_INODE: bool>(
    fds: *const u8,
    max: u32,
    child: i32,
    off: &FdPidOffsets,
    t: &TruthOffsets,
) -> Option<i32> {
    let fds = fds as u64;
    let child = child as u32 as u64;
    let name = u64::from_le_bytes(ANON_PIDFD_NAME);
    let mut fd = 0u32;
    while fd < PIDFD_SCAN_FDS {
        if fd >= max {
            return None;
        }
        unsafe {
            let file = word(fds, fd * 8);
            let (kind_ok, pid) = if VIA_INODE {
                let inode = word(file, off.file_f_inode);
                (word(word(inode, t.inode_sb), t.sb_magic) == PID_FS_MAGIC, word(inode, off.inode_i_private))
            } else {
                let dentry = word(file, t.file_dentry);
                (word(word(dentry, t.dentry_name), 0) == name, word(file, off.file_private_data))
            };
            let nr = word(pid, off.pid_numbers_nr) & 0xffff_ffff;
            if kind_ok & (nr == child) & (pid != 0) {
                return Some(fd as i32);
            }
        }
        fd += 1;
    }
    None
}

/// The caller's pid namespace level and its process id there (0, 0 in the initial
/// namespace or when unknown).
#[inline(always)]
pub fn caller_ns() -> (u32, i32) {
    let t = truth_offsets();
    if t.valid == 0 {
        return (0, 0);
    }
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Some(leader) = read_ptr(task, t.task_group_leader) else { return (0, 0) };
        let Some(pid) = read_ptr(leader, t.task_thread_pid) else { return (0, 0) };
        let Ok(level) = bpf_probe_read_kernel(pid.add(t.pid_level as usize) as *const u32) else {
            return (0, 0);
        };
        if level == 0 {
            return (0, 0);
        }
        (level & PID_NS_LEVEL_MASK, pid_nr_at(pid, level, t))
    }
}

/// Copies the process's name (the thread-group leader's comm) into `dst`; false when it
/// cannot be read.
#[inline(always)]
pub fn leader_comm(dst: *mut u8) -> bool {
    let t = truth_offsets();
    if t.valid == 0 {
        return false;
    }
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Some(leader) = read_ptr(task, t.task_group_leader) else { return false };
        generated::bpf_probe_read_kernel_str(dst.cast(), 16, leader.add(t.task_comm as usize).cast()) > 0
    }
}

/// How many pids cgroups, from the caller's up, are checked for a reached limit: the kernel
/// charges every level but the root (pids_try_charge), and real hierarchies are shallow.
const PIDS_DEPTH: u32 = 8;

/// Whether the current task's pids cgroup, or one of its ancestors, has no room for another
/// task (counter >= pids.max): the pids controller refuses a fork when any level is full.
/// Only read on an EAGAIN failure, after the kernel undid its charge.
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
        // Straight-line reads (0 when unreadable, see `word`): one branch per level keeps
        // the verifier fast on old kernels.
        let mut css = css as u64;
        let mut depth = 0;
        while depth < PIDS_DEPTH {
            // The root has no parent and no limit: it is never checked.
            let parent = word(css, off.css_parent);
            let counter = word(css, off.pids_counter) as i64;
            let limit = word(css, off.pids_limit) as i64;
            if (css != 0) & (parent != 0) & (counter >= limit) {
                return true;
            }
            css = parent;
            depth += 1;
        }
        false
    }
}

/// Whether the fd-table walk can check file kinds on this kernel (offsets known).
#[inline(always)]
pub fn fd_walk_known() -> bool {
    fd_pid_offsets().valid != 0 && truth_offsets().valid != 0
}

/// x86 `TS_COMPAT` in `thread_info.status`: set while a 32-bit syscall runs, from its entry
/// until the return to user space (after the sys_exit tracepoints).
const TS_COMPAT: u32 = 0x0002;

/// Whether the current syscall came through the 32-bit entry (x86 in_ia32_syscall()).
#[inline(always)]
pub fn in_compat_syscall() -> bool {
    let t = truth_offsets();
    if t.ti_status_valid == 0 {
        return false;
    }
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        bpf_probe_read_kernel(task.add(t.task_ti_status as usize) as *const u32)
            .is_ok_and(|s| s & TS_COMPAT != 0)
    }
}

/// Copies the name of the caller's cgroup2 directory into `dst` (`len` bytes, NUL-terminated);
/// leaves `dst[0] = 0` when unknown.
#[inline(always)]
pub fn cgroup_name(dst: *mut u8, len: u32) {
    let t = truth_offsets();
    let p = pids_limit_offsets();
    unsafe {
        *dst = 0;
        if t.kn_valid == 0 {
            return;
        }
        let task = bpf_get_current_task() as *const u8;
        let Some(cset) = read_ptr(task, p.task_cgroups) else { return };
        let Some(cgrp) = read_ptr(cset, t.cset_dfl_cgrp) else { return };
        let Some(kn) = read_ptr(cgrp, t.cgroup_kn) else { return };
        let Some(name) = read_ptr(kn, t.kn_name) else { return };
        if generated::bpf_probe_read_kernel_str(dst.cast(), len, name.cast()) < 0 {
            *dst = 0;
        }
    }
}

/// x86_64 `__USER_CS`: the code segment of a 64-bit user task's saved registers.
const USER_CS: u64 = 0x33;
/// THREAD_SIZE (16 KiB; 32 KiB with KASAN) and TOP_OF_KERNEL_STACK_PADDING (0; 16 with
/// FRED) are not in BTF: each combination is tried.
const STACK_LAYOUTS: [(u32, u32); 4] = [(16384, 0), (16384, 16), (32768, 0), (32768, 16)];

/// x86 `__USER32_CS`: the code segment of an ia32 task's saved registers.
const USER32_CS: u64 = 0x23;

/// x86_64: the task's saved user registers at the top of its stack: the first candidate
/// layout whose frame has a user `cs` (64-bit only with `NR`, where its `orig_ax` must also be
/// `nr`; 64-bit or ia32 without). `None` where the layout is unknown (other architectures) or
/// no candidate is accepted. No closure: a closure became a BPF subprogram with a pointer
/// argument, which the 5.10 and 6.1 verifiers refuse ("Unrecognized arg#0 type PTR").
#[inline(always)]
fn user_regs<const NR: bool>(nr: u64) -> Option<*const u8> {
    let t = truth_offsets();
    if t.regs_valid == 0 {
        return None;
    }
    // SAFETY: probe reads only.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let stack = read_ptr(task, t.task_stack)?;
        for (size, pad) in STACK_LAYOUTS {
            let regs = stack.add((size - pad - t.pt_regs_size) as usize);
            let Ok(cs) = bpf_probe_read_kernel(regs.add(t.regs_cs as usize) as *const u64) else { continue };
            let cs = cs & 0xffff;
            let ok = if NR {
                cs == USER_CS
                    && bpf_probe_read_kernel(regs.add(t.regs_orig_ax as usize) as *const u64) == Ok(nr)
            } else {
                cs == USER_CS || cs == USER32_CS
            };
            if ok {
                return Some(regs);
            }
        }
        None
    }
}

/// The first argument register (x86_64 `di`) of the current syscall as the caller made it,
/// from the task's saved user registers: the candidate frame whose `orig_ax` is syscall `nr`
/// and whose `cs` is the 64-bit user segment. Only read on rare paths (a failed clone whose
/// entry never fired).
#[inline(always)]
pub fn user_arg0(nr: u64) -> Option<u64> {
    let regs = user_regs::<true>(nr)?;
    // SAFETY: probe read only.
    unsafe { bpf_probe_read_kernel(regs.add(truth_offsets().regs_di as usize) as *const u64).ok() }
}

/// x86_64 without the `bpf_task_pt_regs` helper (before 5.15): the number of the syscall in
/// progress, from the saved user registers (the frame whose `cs` is a user code segment,
/// 64-bit or ia32). `None` on other architectures or without a user frame.
#[inline(always)]
pub fn syscall_nr_from_stack() -> Option<i32> {
    let regs = user_regs::<false>(0)?;
    // SAFETY: probe read only.
    unsafe { bpf_probe_read_kernel(regs.add(truth_offsets().regs_orig_ax as usize) as *const i32).ok() }
}
