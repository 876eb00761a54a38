//! Risky pidfd use (README "Risky pidfd use"): at pidfd_getfd / pidfd_send_signal entry, while
//! the caller's pidfd still pins the target, what the kernel has of that target: is it exiting,
//! whose credentials does it run with, which cgroup is it in, and (getfd) which file sits at
//! the fd being taken. Every read goes through offsets the agent took from this kernel's BTF;
//! a failed read leaves the fact unset (`TARGET_SEEN` / `FILE_SEEN` say what is valid).
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    bpf_probe_read_kernel_str_bytes,
};
use aya_ebpf::{macros::map, maps::PerCpuArray};
use pidfd_trace_common::{
    EnterState, EventKind, PATH_PART_BYTES, PATH_PARTS, PathParts, TargetFacts, exit_facts, risk,
};

use crate::{
    globals::{fd_pid_offsets, new_fd_offsets, risk_offsets},
    maps::RISKY,
};

/// A cgroup directory name read by `container_scope` (kernfs names are at most NAME_MAX + 1).
#[map]
static KN_NAME: PerCpuArray<[u8; KN_NAME_BYTES]> = PerCpuArray::with_max_entries(1, 0);
const KN_NAME_BYTES: usize = 256;
/// How many cgroup2 directories the container walk looks at per side: the task's own and its
/// 8 nearest ancestors (README "Risky pidfd use").
const CONTAINER_LEVELS: usize = 9;
/// The 64 hex digits of an OCI container id.
const OCI_ID: usize = 64;

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
/// include/linux/fs.h: `file.f_mode` of an O_PATH open, 0x4000 in 5.10 … 7.3.
const FMODE_PATH: u32 = 0x4000;

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
    unsafe { pidfd_file(file) }.map(|f| f.pid)
}

/// What proving `file` a pidfd read on the way: its `struct pid`, inode and filesystem magic
/// (`pidfd_pid`), kept so that the facts of a new pidfd need not read them again.
struct PidfdFile {
    pid: *const u8,
    inode: *const u8,
    magic: u32,
}

#[inline(always)]
unsafe fn pidfd_file(file: *const u8) -> Option<PidfdFile> {
    let fo = fd_pid_offsets();
    let ro = risk_offsets();
    unsafe {
        let inode = read_ptr(file, fo.file_f_inode)?;
        let sb = read_ptr(inode, ro.inode_i_sb)?;
        let magic = read::<u64>(sb, ro.sb_s_magic)? as u32;
        let pid = if fo.via_inode != 0 {
            if magic != PIDFS_MAGIC {
                return None;
            }
            read_ptr(inode, fo.inode_i_private)?
        } else {
            if magic != ANON_INODE_FS_MAGIC {
                return None;
            }
            let dentry = read_ptr(file, ro.file_dentry)?;
            let name = read_ptr(dentry, ro.dentry_name)?;
            if read::<[u8; 8]>(name, 0)? != *b"[pidfd]\0" {
                return None;
            }
            read_ptr(file, fo.file_private_data)?
        };
        Some(PidfdFile { pid, inode, magic })
    }
}

/// `file.f_op` of pidfds, learnt from the first pidfd `installed_pidfd` proved to be one
/// (every pidfd's file shares it); 0 until then. Kernel data symbols (pidfs_file_operations)
/// are not in /proc/kallsyms on kernels without CONFIG_KALLSYMS_ALL, so the agent cannot pass
/// it in.
static mut PIDFD_FOPS: u64 = 0;

/// include/linux/fdtable.h: the size of `files_struct.fd_array` (BITS_PER_LONG).
const NR_OPEN_DEFAULT: u64 = 64;

/// A pidfd the current call just installed in the caller's fd table (`new_pidfd`).
pub struct NewPidfd {
    pid: *const u8,
    inode: *const u8,
    magic: u32,
}

/// The caller's fd `fd`, just installed by a creation path, if it is a pidfd. `None` for any
/// other file: the hot openat exit calls this first and relies on it costing a few probe
/// reads, no helper beyond them, no map and no stack set-up.
#[inline(always)]
pub fn new_pidfd(fd: u64) -> Option<NewPidfd> {
    let no = new_fd_offsets();
    if no.valid == 0 {
        return None;
    }
    let fo = fd_pid_offsets();
    if fo.valid == 0 || risk_offsets().valid == 0 {
        return None;
    }
    // SAFETY: probe reads only; a bad pointer reads as None.
    unsafe {
        // `fd` was just installed by this call, so it is below max_fds: no bound read.
        let files = read_ptr(bpf_get_current_task() as *const u8, fo.task_files)?;
        let fdt = read_ptr(files, fo.files_fdt)?;
        let file = if fdt == files.add(no.files_fdtab as usize) && fd < NR_OPEN_DEFAULT {
            // The table was never expanded: its array is files->fd_array.
            read_ptr(files, no.files_fd_array + (fd as u32) * 8)?
        } else {
            let fds = read_ptr(fdt, fo.fdt_fd)?;
            read_ptr(fds, (fd as u32).wrapping_mul(8))?
        };
        // Fast refusal once a pidfd's operations are known: four reads for any other file
        // (five in a process that ever had 64 fds open).
        let fop = read::<u64>(file, no.file_f_op).unwrap_or(0);
        let known = core::ptr::read_volatile(&raw const PIDFD_FOPS);
        if known != 0 && fop != known {
            return None;
        }
        let f = pidfd_file(file)?;
        // An O_PATH open of a pidfd (`/proc/self/fd/N` with O_PATH) is a pidfs file too, but
        // with `empty_fops`: the kernel refuses it as a pidfd, and learning its `f_op` would
        // turn every real pidfd away from here on.
        if read::<u32>(file, no.file_f_mode).unwrap_or(FMODE_PATH) & FMODE_PATH != 0 {
            return None;
        }
        if known == 0 && fop != 0 {
            // Learnt from a file the full check (filesystem magic, name) proved a pidfd.
            core::ptr::write_volatile(&raw mut PIDFD_FOPS, fop);
        }
        Some(NewPidfd { pid: f.pid, inode: f.inode, magic: f.magic })
    }
}

impl NewPidfd {
    /// A pidfd file the kernel just made (`struct file *`), not yet in any fd table: `None`
    /// if it is not a pidfd.
    #[inline(always)]
    pub fn of_file(file: u64) -> Option<NewPidfd> {
        // SAFETY: probe reads only.
        let f = unsafe { pidfd_file(file as *const u8) }?;
        Some(NewPidfd { pid: f.pid, inode: f.inode, magic: f.magic })
    }

    /// The target's pid in pid namespace `level` (0: the initial one), reaped or not; 0 if
    /// it has no number there.
    #[inline(always)]
    pub fn nr_at(&self, level: u32) -> i32 {
        if level == 0 {
            // SAFETY: probe read only.
            unsafe { read::<i32>(self.pid, fd_pid_offsets().pid_numbers_nr) }.unwrap_or(0)
        } else {
            crate::task::pid_nr(self.pid, level)
        }
    }

    /// The pidfd file's inode number and filesystem magic into `facts` (`pidfd_ino` on pidfs,
    /// 6.9+), nothing about its process. The inode and magic are those the pidfd check read.
    #[inline(always)]
    pub fn file_facts(&self, facts: &mut TargetFacts) {
        // SAFETY: probe read only.
        facts.file_ino = unsafe { read::<u64>(self.inode, risk_offsets().inode_i_ino) }.unwrap_or(0);
        facts.file_magic = self.magic;
    }

    /// The pid (initial namespace) the pidfd refers to, or 0 when that process was already
    /// reaped (then `exit_facts::REAPED` is set); `facts.file_ino` / `file_magic` get its
    /// inode number and filesystem magic (the pidfs inode number is `pidfd_ino`, 6.9+).
    #[inline(always)]
    pub fn facts(&self, facts: &mut TargetFacts) -> i32 {
        self.facts_nr(facts, self.nr_at(0))
    }

    /// `facts` for a caller that has already read the pid in the initial namespace
    /// (`nr_at(0)`), which is `nr0`: one probe read fewer.
    #[inline(always)]
    pub fn facts_nr(&self, facts: &mut TargetFacts, nr0: i32) -> i32 {
        self.file_facts(facts);
        // SAFETY: probe read only.
        // pid->tasks[PIDTYPE_PID].first: NULL once release_task() has detached the task.
        if unsafe { read::<u64>(self.pid, risk_offsets().pid_tasks) }.unwrap_or(1) == 0 {
            facts.exit |= exit_facts::REAPED;
            return 0;
        }
        nr0
    }
}

/// `new_pidfd` and its facts in one: `Some(target pid)` when `fd` is a new pidfd.
#[inline(always)]
pub fn installed_pidfd(fd: u64, facts: &mut TargetFacts) -> Option<i32> {
    let p = new_pidfd(fd)?;
    Some(p.facts(facts))
}

/// pidfd_getfd: whether the file the entry program found at the target's fd (`FILE_SEEN`)
/// is a pidfd, so that a successful call installed a copy of a pidfd.
#[inline(always)]
pub fn took_pidfd(facts: &TargetFacts) -> bool {
    facts.risk & risk::FILE_SEEN != 0
        && (facts.file_magic == PIDFS_MAGIC
            || (facts.file_magic == ANON_INODE_FS_MAGIC && facts.file_name[..8] == *b"[pidfd]\0"))
}

/// The task behind the caller's `pidfd`, if that fd really is a pidfd.
#[inline(always)]
unsafe fn pidfd_task(pidfd: u64) -> Option<*const u8> {
    unsafe { fd_task::<false>(pidfd) }
}

/// The task behind the caller's fd: a pidfd, or with `PROC_DIRS` also a `/proc/<pid>`
/// directory (pidfd_send_signal takes either, and a caller must not slip past the risk facts
/// by choosing the fd kind).
#[inline(always)]
unsafe fn fd_task<const PROC_DIRS: bool>(fd: u64) -> Option<*const u8> {
    let ro = risk_offsets();
    unsafe {
        let file = fd_file(bpf_get_current_task() as *const u8, fd)?;
        let pid = match pidfd_pid(file) {
            Some(pid) => pid,
            None if PROC_DIRS => crate::task::proc_dir_pid_of(file)?,
            None => return None,
        };
        // pid->tasks[PIDTYPE_PID].first is &task->pid_links[PIDTYPE_PID].
        let node = read_ptr(pid, ro.pid_tasks)?;
        Some(node.wrapping_sub(ro.task_pid_links as usize))
    }
}

/// Fills `facts` for a pidfd_getfd (`target_fd` = Some) or pidfd_send_signal. Returns the
/// target's cgroup2 directory (`struct kernfs_node *`) when it is not the caller's, for the
/// container walk (`start_container_walk`), else 0.
#[inline(always)]
pub fn gather(pidfd: u64, target_fd: Option<u64>, facts: &mut TargetFacts) -> u64 {
    match target_fd {
        Some(fd) => gather_facts(pidfd, fd, 1, facts),
        None => gather_facts(pidfd, 0, 0, facts),
    }
}

#[inline(always)]
fn gather_facts(pidfd: u64, fd_arg: u64, has_fd: u64, facts: &mut TargetFacts) -> u64 {
    let target_fd = if has_fd != 0 { Some(fd_arg) } else { None };
    let ro = risk_offsets();
    if ro.valid == 0 {
        return 0;
    }
    let mut target_kn = 0u64;
    // SAFETY: every access is a bpf_probe_read_kernel; bad pointers read as None.
    unsafe {
        let task = if has_fd != 0 { pidfd_task(pidfd) } else { fd_task::<true>(pidfd) };
        let Some(task) = task else { return 0 };
        let Some(tflags) = read::<u32>(task, ro.task_flags) else { return 0 };
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
        if let Some(kn) = task_kn(task)
            && let Some(id) = read::<u64>(kn, ro.kernfs_node_id)
        {
            facts.target_cgroup_id = id;
            let mine = bpf_get_current_cgroup_id();
            if id != 0 && mine != 0 && id != mine {
                facts.risk |= risk::CGROUP_DIFFERS;
            }
            // Containers are decided in the kernel too, by the container walk the entry
            // program starts after this: a container that exits before the agent reads the
            // record, or 2,000 cgroups, change nothing (README "Risky pidfd use").
            if facts.risk & risk::CGROUP_DIFFERS != 0 {
                target_kn = kn as u64;
            }
        }

        // pidfd_getfd: the file at targetfd in the target's table.
        let Some(fd) = target_fd else { return target_kn };
        let Some(file) = fd_file(task, fd) else { return target_kn };
        let Some(inode) = read_ptr(file, fd_pid_offsets().file_f_inode) else { return target_kn };
        facts.file_mode = read::<u16>(inode, ro.inode_i_mode).unwrap_or(0);
        facts.file_ino = read::<u64>(inode, ro.inode_i_ino).unwrap_or(0);
        if read::<u32>(inode, ro.inode_i_nlink) == Some(0) {
            facts.risk |= risk::FILE_DELETED;
        }
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
    target_kn
}

/// The errno values of pidfd_getfd that say the call reached its target: the kernel checks
/// flags (`EINVAL`), the pidfd (`EBADF`), the task (`ESRCH`), then ptrace access (`EPERM`),
/// then the target's fd (`EBADF` again). Only successes and `EPERM` refusals are counted: a
/// call refused earlier never touched the target (README "Risky pidfd use").
const EPERM: i64 = 1;

/// Counts a pidfd_getfd with any counted risk bit in `RISKY` (exact: before the record), if it
/// reached its target: it succeeded or the ptrace access check refused it (`EPERM`).
#[inline(always)]
pub fn count(facts: &TargetFacts, ret: i64) {
    let bits = facts.risk & risk::COUNTED;
    if bits == 0 || !(ret >= 0 || ret == -EPERM) {
        return;
    }
    if let Some(v) = RISKY.get_ptr_mut(risk::slot(bits)) {
        unsafe { *v += 1 };
    }
}

/// `task->cgroups->dfl_cgrp->kn`: the task's cgroup2 directory.
#[inline(always)]
unsafe fn task_kn(task: *const u8) -> Option<*const u8> {
    let ro = risk_offsets();
    unsafe {
        let cset = read_ptr(task, ro.task_cgroups)?;
        let cgrp = read_ptr(cset, ro.css_set_dfl_cgrp)?;
        read_ptr(cgrp, ro.cgroup_kn)
    }
}

/// Per-CPU state of the container walk, carried across the tail calls of
/// `enter_tail_container` (tracepoint/mod.rs): one cgroup2 directory level per run, the
/// target's directories first, then the caller's. A tail call runs on the same CPU in the
/// same program run, so nothing else uses the slot meanwhile.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ContainerWalk {
    /// The `struct kernfs_node *` to look at in this run.
    kn: u64,
    /// A `machine-….scope` seen one level down (its node id), waiting for its parent to be
    /// `machine.slice`; 0 when none.
    machine: u64,
    /// The target's container, once its side is done.
    target: u64,
    /// Levels looked at on this side before this one.
    level: u32,
    /// 0: the target's directories; 1: the caller's.
    side: u32,
}

#[map]
static CONTAINER_WALK: PerCpuArray<ContainerWalk> = PerCpuArray::with_max_entries(1, 0);

/// Sets up the container walk from the target's cgroup2 directory `target_kn` (from
/// `gather`); the caller then tail-calls `exit_tail::CONTAINER`. False when there is nothing
/// to walk.
#[inline(always)]
pub fn start_container_walk(target_kn: u64) -> bool {
    if target_kn == 0 {
        return false;
    }
    let Some(w) = CONTAINER_WALK.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot of a per-CPU array.
    unsafe { *w = ContainerWalk { kn: target_kn, machine: 0, target: 0, level: 0, side: 0 } };
    true
}

/// One run of the container walk: looks at one cgroup2 directory. Returns true when the walk
/// goes on (the tail program calls itself); at the end it stores `target_container`,
/// `caller_container` and `CROSS_CONTAINER` in this thread's entry state, which the syscall
/// exit reads. What counts as a container scope is `container_scope`'s; a side ends at the
/// first scope, at a read failure or after `CONTAINER_LEVELS` directories (0: not in a
/// container).
#[inline(always)]
pub fn container_step() -> bool {
    let Some(w) = CONTAINER_WALK.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot of a per-CPU array (see `ContainerWalk`).
    let w = unsafe { &mut *w };
    let id = match container_scope(w.kn as *const u8, &mut w.machine) {
        Level::Scope(id) => id,
        Level::Parent(p) if (w.level as usize) + 1 < CONTAINER_LEVELS => {
            w.kn = p as u64;
            w.level += 1;
            return true;
        }
        _ => 0,
    };
    if w.side == 0 {
        w.target = id;
        w.side = 1;
        w.level = 0;
        w.machine = 0;
        // SAFETY: probe reads only.
        if let Some(mine) = unsafe { task_kn(bpf_get_current_task() as *const u8) } {
            w.kn = mine as u64;
            return true;
        }
        store_containers(w.target, 0);
        return false;
    }
    store_containers(w.target, id);
    false
}

/// Writes the walk's result into this thread's entry state (stored by the entry program
/// before it started the walk).
#[inline(always)]
fn store_containers(target: u64, caller: u64) {
    let id = bpf_get_current_pid_tgid();
    let Some(st) = crate::state::current(id) else { return };
    // SAFETY: a valid map value pointer.
    unsafe {
        (*st).facts.target_container = target;
        (*st).facts.caller_container = caller;
        if caller != target {
            (*st).facts.risk |= risk::CROSS_CONTAINER;
        }
    }
}

/// What one cgroup2 directory level says.
enum Level {
    /// A container scope: its kernfs node id (the `machine-….scope` one for machine.slice).
    Scope(u64),
    /// Not a scope: look at this parent next.
    Parent(*const u8),
    /// The root, or a read failed.
    End,
}

/// Whether the cgroup2 directory `kn` is a container scope. The names are the ones
/// pidfd-trace/src/cgroup/container.rs reads as a container: `docker-`, `cri-containerd-`,
/// `crio-`, `libpod-` + 64 hex + `.scope`; `libpod-` + 64 hex; `…:runtime:` + 64 hex; a bare
/// 64-hex name; `systemd-nspawn@….service`; `machine-….scope` under `machine.slice`
/// (`machine` carries the scope seen one level down).
#[inline(always)]
fn container_scope(kn: *const u8, machine: &mut u64) -> Level {
    let ro = risk_offsets();
    let Some(buf) = KN_NAME.get_ptr_mut(0) else { return Level::End };
    // SAFETY: probe reads only; `buf` is this CPU's scratch slot.
    unsafe {
        let buf = &mut *buf;
        let Some(name) = read_ptr(kn, ro.kn_name) else { return Level::End };
        let len = match bpf_probe_read_kernel_str_bytes(name, buf) {
            Ok(s) => s.len(),
            Err(_) => return Level::End,
        };
        let head = (
            u64::from_le_bytes([buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]]),
            u64::from_le_bytes([buf[8], buf[9], buf[10], buf[11], buf[12], buf[13], buf[14], buf[15]]),
        );
        let kind = scope_name(name, len, head);
        let id = read::<u64>(kn, ro.kernfs_node_id).unwrap_or(0);
        if kind == CONTAINER {
            return Level::Scope(id);
        }
        if kind == MACHINE_SLICE && *machine != 0 {
            return Level::Scope(*machine);
        }
        *machine = if kind == MACHINE { id } else { 0 };
        match read_ptr(kn, ro.kn_parent) {
            Some(parent) => Level::Parent(parent),
            None => Level::End,
        }
    }
}

/// What `scope_name` says of one cgroup directory name.
const NOT_SCOPE: u8 = 0;
const CONTAINER: u8 = 1;
/// `machine-<name>.scope`: a container only directly under `machine.slice`.
const MACHINE: u8 = 2;
const MACHINE_SLICE: u8 = 3;

/// `lit` (at most 8 bytes) as the little-endian u64 its bytes make.
const fn word(lit: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < lit.len() {
        v |= (lit[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// The low `n` bytes of a u64.
const fn low(n: u32) -> u64 {
    if n >= 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Bytes of `v` that are >= `c` (for ASCII `v`, `c` <= 0x80): their high bit set.
#[inline(always)]
fn ge(v: u64, c: u8) -> u64 {
    ((v | HIGH).wrapping_sub(ONES * c as u64)) & HIGH
}

/// Whether all 8 bytes of `v` are `0-9a-f`, without a branch per byte.
#[inline(always)]
fn hex8(v: u64) -> u64 {
    let ascii = !v & HIGH;
    let digit = ge(v, b'0') & !ge(v, b'9' + 1);
    let af = ge(v, b'a') & !ge(v, b'f' + 1);
    ((digit | af) & ascii) ^ HIGH
}

/// What one cgroup directory name says (`len` bytes at `name`, the first 16 in `head`).
#[inline(always)]
unsafe fn scope_name(name: *const u8, len: usize, head: (u64, u64)) -> u8 {
    if !(8..KN_NAME_BYTES - 1).contains(&len) {
        return NOT_SCOPE;
    }
    let (h0, h1) = head;
    if len == 13 && h0 == word(b"machine.") && h1 & low(5) == word(b"slice") {
        return MACHINE_SLICE;
    }
    // SAFETY: probe reads within the name's `len` bytes.
    unsafe {
        let tail = read::<u64>(name, (len - 8) as u32).unwrap_or(0);
        let scope = tail >> 16 == word(b".scope");
        if h0 == word(b"systemd-") && h1 & low(7) == word(b"nspawn@") && tail == word(b".service") && len > 23
        {
            return CONTAINER;
        }
        if scope && h0 == word(b"machine-") && len > 14 {
            return MACHINE;
        }
        let end = if scope { len - 6 } else { len };
        if end < OCI_ID {
            return NOT_SCOPE;
        }
        let start = end - OCI_ID;
        let Some(id) = read::<[u64; OCI_ID / 8]>(name, start as u32) else { return NOT_SCOPE };
        let bad = hex8(id[0])
            | hex8(id[1])
            | hex8(id[2])
            | hex8(id[3])
            | hex8(id[4])
            | hex8(id[5])
            | hex8(id[6])
            | hex8(id[7]);
        if bad != 0 {
            return NOT_SCOPE;
        }
        let p7 = h0 & low(7);
        let yes = match (start, scope) {
            // A bare id (cgroupfs driver; user space also wants a runtime directory above it).
            (0, false) => true,
            (7, true) => p7 == word(b"docker-") || p7 == word(b"libpod-"),
            (7, false) => p7 == word(b"libpod-"),
            (15, true) => h0 == word(b"cri-cont") && h1 & low(7) == word(b"ainerd-"),
            (5, true) => h0 & low(5) == word(b"crio-"),
            _ => false,
        };
        // `kubepods-….slice:cri-containerd:<id>`.
        let colon = !scope && start > 1 && read::<u8>(name, (start - 1) as u32) == Some(b':');
        if yes || colon { CONTAINER } else { NOT_SCOPE }
    }
}

/// The file path of the pidfd_getfd record in flight on this CPU: written by the
/// `exit_tail_path` program, copied into the record by `exit_tail_emit_path`.
#[map]
static PATH_SCRATCH: PerCpuArray<PathParts> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's path scratch (see `PATH_SCRATCH`).
#[inline(always)]
pub fn path_scratch() -> Option<&'static mut PathParts> {
    // SAFETY: this CPU's slot; nothing else runs on it until the program chain ends.
    PATH_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Empties the path scratch: the record says "no path" unless `exit_tail_path` fills it (the
/// agent may have been refused that program on this kernel).
#[inline(always)]
pub fn clear_path() {
    if let Some(out) = path_scratch() {
        out.depth = 0;
        out.cut = 0;
        out.more = 0;
        out.changed = 0;
    }
}

/// pidfd_getfd, at syscall exit: the taken file's path as dentry names, into `out` (the
/// path scratch). The file is the caller's new fd on success, else the target's `targetfd`
/// (re-found through the pidfd); either is used only if it is still the file seen at entry
/// (same inode number and device). When it is not, `changed` is set and no names are read:
/// on success the kernel may have taken another file than the entry saw (the target swapped
/// its fd in between) or a sibling thread may have replaced the new fd, and neither the new
/// fd nor the target's table can tell which, so no path is better than a wrong one. For
/// every other record `depth` stays 0.
#[inline(always)]
pub fn file_path(out: &mut PathParts, st: &EnterState, ret: i64) {
    out.depth = 0;
    out.cut = 0;
    out.more = 0;
    out.changed = 0;
    if st.kind != EventKind::PidfdGetfd as u8
        || risk_offsets().valid == 0
        || st.facts.risk & risk::FILE_SEEN == 0
    {
        return;
    }
    // SAFETY: probe reads only; names are written into the scratch's own slots.
    unsafe {
        let file = if ret >= 0 {
            fd_file(bpf_get_current_task() as *const u8, ret as u64)
        } else {
            match pidfd_task(st.arg0) {
                Some(task) => fd_file(task, st.arg1),
                None => None,
            }
        };
        let file = file.filter(|f| same_file(*f, &st.facts));
        let Some(file) = file else {
            out.changed = 1;
            return;
        };
        walk(out, file);
    }
}

/// Whether `file` is the one seen at entry: same inode number and superblock device.
#[inline(always)]
unsafe fn same_file(file: *const u8, facts: &TargetFacts) -> bool {
    let ro = risk_offsets();
    unsafe {
        let Some(inode) = read_ptr(file, fd_pid_offsets().file_f_inode) else { return false };
        let Some(sb) = read_ptr(inode, ro.inode_i_sb) else { return false };
        read::<u64>(inode, ro.inode_i_ino) == Some(facts.file_ino)
            && read::<u32>(sb, ro.sb_s_dev) == Some(facts.file_dev)
    }
}

/// Up to `PATH_PARTS` names from the file's dentry towards the root, crossing mount points
/// (`mount.mnt_mountpoint` in the parent mount) without spending a slot on them.
// The number of names so far lives in `out.depth` (map memory) and is loaded again at each
// step rather than carried in a register: the verifier then sees the same state at a step
// whatever mix of names and mount crossings led there, and prunes (with `depth` in a
// register the 5.10 and 6.1 verifiers walked every mix, past their 1M-instruction budget).
#[inline(always)]
unsafe fn walk(out: &mut PathParts, file: *const u8) {
    // The offsets the loop uses, loaded once into plain values before it (volatile, so that
    // they are not loaded again through the map pointer at each step: the 5.10 and 6.1
    // verifiers then refused this program).
    let ro = risk_offsets();
    let off = |f: &u32| unsafe { core::ptr::read_volatile(f) };
    let (mnt_root, mnt_parent, mnt_mountpoint) =
        (off(&ro.mount_mnt_root), off(&ro.mount_parent), off(&ro.mount_mountpoint));
    let (d_parent, d_name) = (off(&ro.dentry_parent), off(&ro.dentry_name));
    unsafe {
        let Some(mut dentry) = read_ptr(file, ro.file_dentry) else { return };
        let Some(vfsmnt) = read_ptr(file, ro.file_mnt) else { return };
        let mut mnt = vfsmnt.wrapping_sub(ro.mount_mnt as usize);
        // Each step either records a name or crosses one mount: 2 * PATH_PARTS bounds both.
        // As the kernel's prepend_path(): a mount ends at its own root dentry (`mnt_root`,
        // a subdirectory for a bind mount), not at its filesystem's root.
        for _ in 0..2 * PATH_PARTS {
            if Some(dentry) == read_ptr(mnt, mnt_root) {
                // The root of this mount: continue at its mount point, or stop at the root.
                let Some(mparent) = read_ptr(mnt, mnt_parent) else { break };
                if mparent == mnt {
                    return;
                }
                let Some(mp) = read_ptr(mnt, mnt_mountpoint) else { break };
                dentry = mp;
                mnt = mparent;
                continue;
            }
            let Some(parent) = read_ptr(dentry, d_parent) else { break };
            if parent == dentry {
                // A filesystem root that is not its mount's root: a dentry of a detached
                // mount or disconnected from it. The names so far are all there is.
                return;
            }
            let depth = core::ptr::read_volatile(&out.depth) as usize;
            if depth >= PATH_PARTS {
                out.more = 1;
                return;
            }
            let Some(name) = read_ptr(dentry, d_name) else { break };
            let slot = &mut out.names[depth];
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
            core::ptr::write_volatile(&mut out.depth, depth as u8 + 1);
            dentry = parent;
        }
        // Ran out of steps (or reads) before the root.
        out.more = 1;
    }
}
