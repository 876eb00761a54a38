//! Linux 7.1+: closing the last reference to a clone3 `CLONE_PIDFD_AUTOKILL` pidfd makes
//! `pidfs_file_release` send the child SIGKILL (`do_send_sig_info`), with no syscall that says
//! why. Probes on both report it as a `pidfd_autokill` signal event: the closing process (the
//! current task: close(2) and exit release files in the closer's context) and the killed
//! process (the pidfd inode's struct pid).
//!
//! Every pidfd release stores one map entry (releases are pidfd closes, not a hot path); the
//! signal probe, which fires for every signal on the host, reads one host-wide word and returns
//! before any map look-up unless a release is in progress somewhere.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use pidfd_trace_common::{EnterState, EventKind, Mode, fn_params};

use crate::{
    emit,
    globals::fd_pid_offsets,
    maps::{AUTOKILL_IN_FLIGHT, AUTOKILL_STATE, gate_add, is_open},
};

// Parameter count of do_send_sig_info, whose fexit reads the return value after the last
// argument (pidfs_file_release's programs read only argument 0).
const SIG_PARAMS: usize = fn_params::DO_SEND_SIG_INFO;
const SIGKILL: u64 = 9;

// prototype: pidfs_file_release/2: int pidfs_file_release(struct inode *inode, struct file *file) [7.1-7.1]
#[fentry(function = "pidfs_file_release")]
pub fn autokill_release_fentry(ctx: FEntryContext) -> u32 {
    release_begins(ctx.arg::<u64>(0), Mode::Fexit);
    0
}

// prototype: pidfs_file_release/2: int pidfs_file_release(struct inode *inode, struct file *file) [7.1-7.1]
#[fexit(function = "pidfs_file_release")]
pub fn autokill_release_fexit(_ctx: FExitContext) -> u32 {
    release_ends();
    0
}

// prototype: do_send_sig_info/4: int do_send_sig_info(int sig, struct kernel_siginfo *info, struct task_struct *p, enum pid_type type) [5.10-7.1]
#[fexit(function = "do_send_sig_info")]
pub fn autokill_sig_fexit(ctx: FExitContext) -> u32 {
    if !is_open(&AUTOKILL_IN_FLIGHT) {
        return 0;
    }
    // `int` arguments and return: only the low 32 bits are meaningful.
    let sig = ctx.arg::<u64>(0) & 0xffff_ffff;
    let ret = ctx.arg::<u64>(SIG_PARAMS) as i32 as i64;
    signal_sent(&ctx, sig, Some(ret));
    0
}

// prototype: pidfs_file_release/2: int pidfs_file_release(struct inode *inode, struct file *file) [7.1-7.1]
#[kprobe]
pub fn autokill_release_kprobe(ctx: ProbeContext) -> u32 {
    release_begins(ctx.arg::<u64>(0).unwrap_or(0), Mode::Kprobe);
    0
}

// prototype: pidfs_file_release/2: int pidfs_file_release(struct inode *inode, struct file *file) [7.1-7.1]
#[kretprobe]
pub fn autokill_release_kret(_ctx: RetProbeContext) -> u32 {
    release_ends();
    0
}

// prototype: do_send_sig_info/4: int do_send_sig_info(int sig, struct kernel_siginfo *info, struct task_struct *p, enum pid_type type) [5.10-7.1]
/// kprobe mode: the signal number is only visible at entry, the result only at return.
#[kprobe]
pub fn autokill_sig_kprobe(ctx: ProbeContext) -> u32 {
    if !is_open(&AUTOKILL_IN_FLIGHT) {
        return 0;
    }
    let sig = ctx.arg::<u64>(0).unwrap_or(0) & 0xffff_ffff;
    signal_sent(&ctx, sig, None);
    0
}

// prototype: do_send_sig_info/4: int do_send_sig_info(int sig, struct kernel_siginfo *info, struct task_struct *p, enum pid_type type) [5.10-7.1]
#[kretprobe]
pub fn autokill_sig_kret(ctx: RetProbeContext) -> u32 {
    if !is_open(&AUTOKILL_IN_FLIGHT) {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(st) = (unsafe { AUTOKILL_STATE.get(&id) }).copied() else { return 0 };
    // Only a SIGKILL seen at entry (arg1) under this release is reported.
    if st.arg1 == SIGKILL {
        emit::finish::<_, false>(&ctx, &st, id, ctx.ret::<u64>() as i32 as i64, -1, 0, Mode::Kprobe);
        let _ = AUTOKILL_STATE.remove(&id);
        gate_add(&AUTOKILL_IN_FLIGHT, u64::MAX);
    }
    0
}

/// A pidfd's last reference is being released: note the process it refers to.
#[inline(always)]
fn release_begins(inode: u64, mode: Mode) {
    let off = fd_pid_offsets();
    if off.valid == 0 || off.via_inode == 0 {
        return;
    }
    // SAFETY: probe reads of kernel memory; failures read as "unknown".
    let target_pid = unsafe {
        let pid = bpf_probe_read_kernel((inode as *const u8).add(off.inode_i_private as usize) as *const u64)
            .unwrap_or(0);
        if pid == 0 {
            return;
        }
        bpf_probe_read_kernel((pid as *const u8).add(off.pid_numbers_nr as usize) as *const i32).unwrap_or(0)
    };
    let mut st = crate::tracepoint::entry(EventKind::PidfdAutokill, 0, 0, 0, 0, target_pid);
    st.mode = mode as u8;
    let id = bpf_get_current_pid_tgid();
    if AUTOKILL_STATE.insert(&id, &st, 0).is_ok() {
        gate_add(&AUTOKILL_IN_FLIGHT, 1);
    }
}

/// The release is over: drop its state unless the signal probe already reported and dropped it.
#[inline(always)]
fn release_ends() {
    let id = bpf_get_current_pid_tgid();
    if AUTOKILL_STATE.remove(&id).is_ok() {
        gate_add(&AUTOKILL_IN_FLIGHT, u64::MAX);
    }
}

/// A signal is being sent (fexit: `ret` is its result; kprobe entry: `None`, the return probe
/// finishes). Only a SIGKILL sent from inside this thread's pidfd release is an autokill.
#[inline(always)]
fn signal_sent<C: EbpfContext>(ctx: &C, sig: u64, ret: Option<i64>) {
    if sig != SIGKILL {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let Some(st) = AUTOKILL_STATE.get_ptr_mut(&id) else { return };
    // SAFETY: the map value stays valid for this program run.
    let st: &mut EnterState = unsafe { &mut *st };
    st.arg1 = SIGKILL;
    if let Some(ret) = ret {
        let done = *st;
        emit::finish::<_, false>(ctx, &done, id, ret, -1, 0, Mode::Fexit);
        let _ = AUTOKILL_STATE.remove(&id);
        gate_add(&AUTOKILL_IN_FLIGHT, u64::MAX);
    }
}
