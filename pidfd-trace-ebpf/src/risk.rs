//! Risky pidfd use (README "Risky pidfd use"): at pidfd_getfd / pidfd_send_signal entry, while
//! the caller's pidfd still pins the target, what the kernel has of that target: is it exiting,
//! whose credentials does it run with, which cgroup is it in, and (getfd) which file sits at
//! the fd being taken. Every read goes through offsets the agent took from this kernel's BTF;
//! a failed read leaves the fact unset (`TARGET_SEEN` / `FILE_SEEN` say what is valid).
use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
};
use pidfd_trace_common::{
    EnterState, EventKind, PATH_PART_BYTES, PATH_PARTS, PathParts, RiskKey, TargetFacts, exit_facts, risk,
    stats,
};

use crate::{
    globals::{fd_pid_offsets, risk_offsets},
    maps::{RISKY, bump_stat},
};

/// include/linux/sched/signal.h: `signal_struct.flags`, the same bit in 5.10 … 6.18.
const SIGNAL_GROUP_EXIT: u32 = 0x0000_0004;
/// include/linux/sched.h: `task_struct.flags`, unchanged 5.10 … 6.18.
const PF_EXITING: u32 = 0x0000_0004;
const PF_KTHREAD: u32 = 0x0020_0000;
/// include/uapi/linux/magic.h.
const PIDFS_MAGIC: u32 = 0x5049_4446;
/// include/uapi/linux/ptrace.h: the si_code of the PTRACE_EVENT_EXIT stop, SIGTRAP | 6 << 8.
const PTRACE_EXIT_STOP_CODE: i32 = 5 | (6 << 8);
const ANON_INODE_FS_MAGIC: u32 = 0x0904_1934;

#[inline(always)]
unsafe fn read<T: Copy>(base: *const u8, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T) }.ok()
}

#[inline(always)]
unsafe fn read_ptr(base: *const u8, off: u32) -> Option<*const u8> {
    unsafe { read::<*const u8>(base, off) }.filter(|p| !p.is_null())
}

/// The `struct file *` at `fd` in `task`'s fd table.
#[inline(always)]
pub unsafe fn fd_file(task: *const u8, fd: u64) -> Option<*const u8> {
    let off = fd_pid_offsets();
    if off.valid == 0 {
        return None;
    }
    unsafe {
        let files = read_ptr(task, off.task_files)?;
        let fdt = read_ptr(files, off.files_fdt)?;
        let max = read::<u32>(fdt, off.fdt_max_fds)?;
        if fd >= max as u64 {
            return None;
        }
        let fds = read_ptr(fdt, off.fdt_fd)?;
        read_ptr(fds, (fd as u32).wrapping_mul(8))
    }
}

/// The `struct pid` behind `file`, if it really is a pidfd: a pidfs file (6.9+) or an anon
/// inode named `[pidfd]` (before). Anything else (a `/dev/null`, a socket, a sysfs file) is
/// `None`: its `i_private` / `private_data` is not a `struct pid` and must never be read as one.
#[inline(always)]
pub unsafe fn pidfd_pid(file: *const u8) -> Option<*const u8> {
    let fo = fd_pid_offsets();
    let ro = risk_offsets();
    unsafe {
        let inode = read_ptr(file, fo.file_f_inode)?;
        let sb = read_ptr(inode, ro.inode_i_sb)?;
        let magic = read::<u64>(sb, ro.sb_s_magic)? as u32;
        if fo.via_inode != 0 {
            if magic != PIDFS_MAGIC {
                return None;
            }
            read_ptr(inode, fo.inode_i_private)
        } else {
            if magic != ANON_INODE_FS_MAGIC {
                return None;
            }
            let dentry = read_ptr(file, ro.file_dentry)?;
            let name = read_ptr(dentry, ro.dentry_name)?;
            if read::<[u8; 8]>(name, 0)? != *b"[pidfd]\0" {
                return None;
            }
            read_ptr(file, fo.file_private_data)
        }
    }
}

/// The task behind the caller's `pidfd`, if that fd really is a pidfd.
#[inline(always)]
unsafe fn pidfd_task(pidfd: u64) -> Option<*const u8> {
    let ro = risk_offsets();
    unsafe {
        let file = fd_file(bpf_get_current_task() as *const u8, pidfd)?;
        let pid = pidfd_pid(file)?;
        // pid->tasks[PIDTYPE_PID].first is &task->pid_links[PIDTYPE_PID].
        let node = read_ptr(pid, ro.pid_tasks)?;
        Some(node.wrapping_sub(ro.task_pid_links as usize))
    }
}

/// Fills `facts` for a pidfd_getfd (`target_fd` = Some) or pidfd_send_signal.
#[inline(always)]
pub fn gather(pidfd: u64, target_fd: Option<u64>, facts: &mut TargetFacts) {
    let ro = risk_offsets();
    if ro.valid == 0 {
        return;
    }
    // SAFETY: every access is a bpf_probe_read_kernel; bad pointers read as None.
    unsafe {
        let Some(task) = pidfd_task(pidfd) else { return };
        let Some(tflags) = read::<u32>(task, ro.task_flags) else { return };
        facts.risk |= risk::TARGET_SEEN;

        // Exit: see README "Risky pidfd use" for where do_exit() sets each of these.
        let mut exit = 0u8;
        let mut sole = false;
        if let Some(sig) = read_ptr(task, ro.task_signal) {
            if read::<u32>(sig, ro.signal_flags).unwrap_or(0) & SIGNAL_GROUP_EXIT != 0 {
                exit |= exit_facts::GROUP_EXIT;
            }
            sole = read::<i32>(sig, ro.signal_nr_threads).unwrap_or(2) <= 1;
        }
        if sole {
            exit |= exit_facts::SOLE_THREAD;
        }
        if tflags & PF_EXITING != 0 {
            exit |= exit_facts::PF_EXITING;
        }
        if tflags & PF_KTHREAD == 0 && read::<u64>(task, ro.task_mm) == Some(0) {
            exit |= exit_facts::NO_MM;
        }
        if read::<i32>(task, ro.task_exit_state).unwrap_or(0) != 0 {
            exit |= exit_facts::ZOMBIE;
        }
        if let Some(info) = read_ptr(task, ro.task_last_siginfo)
            && read::<i32>(info, ro.siginfo_code) == Some(PTRACE_EXIT_STOP_CODE)
        {
            exit |= exit_facts::EXIT_STOP;
        }
        facts.exit = exit;
        let dying = exit
            & (exit_facts::EXIT_STOP | exit_facts::PF_EXITING | exit_facts::NO_MM | exit_facts::ZOMBIE)
            != 0;
        if exit & exit_facts::GROUP_EXIT != 0 || (dying && sole) {
            facts.risk |= risk::TARGET_EXITING;
        }

        // Credentials: the target's objective ones against the caller's real uid, the pair
        // ptrace_may_access(PTRACE_MODE_*_REALCREDS) compares.
        if let (Some(tc), Some(cc)) =
            (read_ptr(task, ro.task_real_cred), read_ptr(bpf_get_current_task() as *const u8, ro.task_cred))
        {
            let uid = read::<u32>(tc, ro.cred_uid).unwrap_or(0);
            let euid = read::<u32>(tc, ro.cred_euid).unwrap_or(0);
            let suid = read::<u32>(tc, ro.cred_suid).unwrap_or(0);
            let fsuid = read::<u32>(tc, ro.cred_fsuid).unwrap_or(0);
            let caller = read::<u32>(cc, ro.cred_uid).unwrap_or(0);
            facts.target_uid = uid;
            facts.target_euid = euid;
            facts.target_suid = suid;
            facts.target_fsuid = fsuid;
            facts.caller_uid = caller;
            if uid != caller || euid != caller || suid != caller || fsuid != caller {
                facts.risk |= risk::CRED_MISMATCH;
            }
            if euid != uid || suid != uid {
                facts.risk |= risk::TARGET_ELEVATED;
            }
        }

        // cgroup2 id: task->cgroups->dfl_cgrp->kn->id, what bpf_get_current_cgroup_id reads.
        if let Some(cset) = read_ptr(task, ro.task_cgroups)
            && let Some(cgrp) = read_ptr(cset, ro.css_set_dfl_cgrp)
            && let Some(kn) = read_ptr(cgrp, ro.cgroup_kn)
            && let Some(id) = read::<u64>(kn, ro.kernfs_node_id)
        {
            facts.target_cgroup_id = id;
            let mine = bpf_get_current_cgroup_id();
            if id != 0 && mine != 0 && id != mine {
                facts.risk |= risk::CGROUP_DIFFERS;
            }
        }

        // pidfd_getfd: the file at targetfd in the target's table.
        let Some(fd) = target_fd else { return };
        let Some(file) = fd_file(task, fd) else { return };
        let Some(inode) = read_ptr(file, fd_pid_offsets().file_f_inode) else { return };
        facts.file_mode = read::<u16>(inode, ro.inode_i_mode).unwrap_or(0);
        facts.file_ino = read::<u64>(inode, ro.inode_i_ino).unwrap_or(0);
        if let Some(sb) = read_ptr(inode, ro.inode_i_sb) {
            facts.file_magic = read::<u64>(sb, ro.sb_s_magic).unwrap_or(0) as u32;
            facts.file_dev = read::<u32>(sb, ro.sb_s_dev).unwrap_or(0);
        }
        if let Some(dentry) = read_ptr(file, ro.file_dentry)
            && let Some(name) = read_ptr(dentry, ro.dentry_name)
        {
            let _ = bpf_probe_read_kernel_str_bytes(name, &mut facts.file_name);
        }
        facts.risk |= risk::FILE_SEEN;
    }
}

/// Counts a pidfd_getfd with any counted risk bit in `RISKY` (exact: before the record).
#[inline(always)]
pub fn count(facts: &TargetFacts) {
    let bits = facts.risk & risk::COUNTED;
    if bits == 0 {
        return;
    }
    let differs = bits & risk::CGROUP_DIFFERS != 0;
    let key = RiskKey {
        caller_cgroup: if differs { unsafe { bpf_get_current_cgroup_id() } } else { 0 },
        target_cgroup: if differs { facts.target_cgroup_id } else { 0 },
        risk: bits,
        _pad: [0; 7],
    };
    if let Some(v) = RISKY.get_ptr_mut(&key) {
        unsafe { *v += 1 };
        return;
    }
    if RISKY.insert(&key, &1u64, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    if let Some(v) = RISKY.get_ptr_mut(&key) {
        unsafe { *v += 1 };
        return;
    }
    bump_stat(stats::RISKY_FULL);
}

/// pidfd_getfd, at syscall exit: the taken file's path as dentry names, written straight into
/// the reserved record. The file is the caller's new fd on success (just installed; a sibling
/// thread could close or replace it in between), else the target's `targetfd` (re-found
/// through the pidfd). For every other record only the header is cleared: `depth` 0.
#[inline(always)]
pub fn file_path(out: &mut PathParts, st: &EnterState, ret: i64) {
    out.depth = 0;
    out.cut = 0;
    out.more = 0;
    if st.kind != EventKind::PidfdGetfd as u8 || risk_offsets().valid == 0 {
        return;
    }
    // SAFETY: probe reads only; names are written into the record's own slots.
    unsafe {
        let file = if ret >= 0 {
            fd_file(bpf_get_current_task() as *const u8, ret as u64)
        } else {
            match pidfd_task(st.arg0) {
                Some(task) => fd_file(task, st.arg1),
                None => None,
            }
        };
        let Some(file) = file else { return };
        walk(out, file);
    }
}

/// Up to `PATH_PARTS` names from the file's dentry towards the root, crossing mount points
/// (`mount.mnt_mountpoint` in the parent mount) without spending a slot on them.
#[inline(always)]
unsafe fn walk(out: &mut PathParts, file: *const u8) {
    let ro = risk_offsets();
    unsafe {
        let Some(mut dentry) = read_ptr(file, ro.file_dentry) else { return };
        let Some(vfsmnt) = read_ptr(file, ro.file_mnt) else { return };
        let mut mnt = vfsmnt.wrapping_sub(ro.mount_mnt as usize);
        let mut depth = 0usize;
        // Each step either records a name or crosses one mount: 2 * PATH_PARTS bounds both.
        for _ in 0..2 * PATH_PARTS {
            let Some(parent) = read_ptr(dentry, ro.dentry_parent) else { break };
            if parent == dentry {
                // The root of this mount: continue at its mount point, or stop at the root.
                let Some(mparent) = read_ptr(mnt, ro.mount_parent) else { break };
                if mparent == mnt {
                    out.depth = depth as u8;
                    return;
                }
                let Some(mp) = read_ptr(mnt, ro.mount_mountpoint) else { break };
                dentry = mp;
                mnt = mparent;
                continue;
            }
            if depth >= PATH_PARTS {
                out.more = 1;
                break;
            }
            let Some(name) = read_ptr(dentry, ro.dentry_name) else { break };
            let slot = &mut out.names[depth & (PATH_PARTS - 1)];
            match bpf_probe_read_kernel_str_bytes(name, slot) {
                // A full slot is a cut name only if the name goes on past it.
                Ok(s) if s.len() >= PATH_PART_BYTES - 1 => {
                    if read::<u8>(name, (PATH_PART_BYTES - 1) as u32).unwrap_or(0) != 0 {
                        out.cut |= 1 << depth;
                    }
                }
                Ok(_) => {}
                Err(_) => slot[0] = 0,
            }
            depth += 1;
            dentry = parent;
        }
        out.depth = depth as u8;
        if out.more == 0 {
            // Ran out of steps before the root.
            out.more = 1;
        }
    }
}
