//! The one way a finished syscall leaves the kernel: an exact counter bump, then a best-effort
//! ring-buffer record whose loss is itself counted.
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_smp_processor_id, bpf_ktime_get_boot_ns,
    },
};
use aya_log_ebpf::warn;
use pidfd_trace_common::{CounterKey, EnterState, EventRecord, Mode, clone_flags, stats};

use crate::maps::{EVENTS, OUTCOMES, bump_stat};

/// Counts the outcome and sends the record. `ret` is the syscall's raw return value.
#[inline(always)]
pub fn finish<C: EbpfContext>(
    ctx: &C,
    st: &EnterState,
    pid_tgid: u64,
    ret: i64,
    pidfd: i32,
    hints: u8,
    mode: Mode,
) {
    let kind = st.kind;
    let hints = st.hints | hints;
    count_outcome(ctx, kind, hints, st, ret);

    let seq = bump_stat(stats::RECORDS);
    let Some(mut entry) = EVENTS.reserve::<EventRecord>(0) else {
        bump_stat(stats::LOST);
        return;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let rec = EventRecord {
        ts_ns: now,
        duration_ns: now.wrapping_sub(st.ts_ns),
        cpu_seq: seq,
        pid_tgid,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        flags: st.flags,
        ret,
        arg0: st.arg0,
        arg1: st.arg1,
        uptr: st.uptr,
        pidfd,
        cpu: unsafe { bpf_get_smp_processor_id() },
        kind,
        mode: mode as u8,
        hints,
        _pad: 0,
        target_pid: st.target_pid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    entry.write(rec);
    entry.submit(0);
}

#[inline(always)]
fn count_outcome<C: EbpfContext>(ctx: &C, kind: u8, hints: u8, st: &EnterState, ret: i64) {
    let signal = if kind == pidfd_trace_common::EventKind::PidfdSendSignal as u8 {
        if st.arg1 > 255 { 255 } else { st.arg1 as u8 }
    } else {
        0
    };
    let is_clone = kind == pidfd_trace_common::EventKind::Clone as u8
        || kind == pidfd_trace_common::EventKind::Clone3 as u8;
    let key = CounterKey {
        kind,
        hints,
        signal,
        _pad: 0,
        errno: if ret < 0 { (-ret) as u32 } else { 0 },
        flag_bits: if is_clone { (st.flags & clone_flags::PIDFD_CONFLICTS) as u32 } else { 0 },
    };
    if let Some(v) = OUTCOMES.get_ptr_mut(&key) {
        unsafe { *v += 1 };
        return;
    }
    if OUTCOMES.insert(&key, &1u64, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU may have created the slot between our lookup and insert.
    if let Some(v) = OUTCOMES.get_ptr_mut(&key) {
        unsafe { *v += 1 };
        return;
    }
    bump_stat(stats::OUTCOMES_FULL);
    warn!(ctx, "outcome counter map full: kind {} errno {} not counted", kind, key.errno);
}
