//! The one way a finished syscall leaves the kernel: an exact counter bump, then a best-effort
//! ring-buffer record whose loss is itself counted.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_uid_gid, bpf_get_smp_processor_id, bpf_ktime_get_boot_ns,
        generated,
    },
};
use aya_log_ebpf::warn;
use pidfd_trace_common::{
    CALLER_NS_UNREAD, CGROUP_NAME_BYTES, CounterKey, EnterState, EventKind, EventRecord, Mode, clone_flags,
    stats, xhints,
};

use crate::{
    maps::{EVENTS, OUTCOMES, bump_stat},
    task::{caller_ns, cgroup_name, leader_comm},
    words::copy_words,
};

/// `finish` for the creation paths' exits (tracepoint/paths.rs): never a pidfd_getfd, so
/// without the file path walk.
#[inline(always)]
pub fn finish_creation<C: EbpfContext>(
    ctx: &C,
    st: &EnterState,
    pid_tgid: u64,
    ret: i64,
    pidfd: i32,
    mode: Mode,
) {
    finish::<C, false>(ctx, st, pid_tgid, ret, pidfd, 0, mode);
}

/// The `xhints` bits that name an outcome (its stage, its ABI) and so go into counter keys.
const COUNTED_XHINTS: u8 = xhints::COMPAT | xhints::DENIED | xhints::ARGS;

/// Counts the outcome and sends the record. `ret` is the syscall's raw return value.
/// `PATH`: the record may be a pidfd_getfd's, whose file path the `exit_tail_path` program
/// left in the path scratch (risk.rs); false in programs that never emit one.
#[inline(always)]
pub fn finish<C: EbpfContext, const PATH: bool>(
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
    if kind == pidfd_trace_common::EventKind::PidfdGetfd as u8 {
        crate::risk::count(&st.facts, ret);
    }

    let seq = bump_stat(stats::RECORDS);
    let Some(mut entry) = EVENTS.reserve::<EventRecord>(0) else {
        bump_stat(stats::LOST);
        return;
    };
    // Fields are stored straight into the reserved slot and the comm helper writes into it
    // too: building the record on the stack first cost a second copy and byte-wise moves of
    // `comm` (about a tenth of the record path).
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points at the reserved, writable slot of size_of::<EventRecord>(); every
    // field is written before submit, except the `path.names` slots past `path.depth`, which
    // keep what an earlier record of ours left in the ring and which the agent never reads.
    unsafe {
        let now = bpf_ktime_get_boot_ns();
        (*rec).ts_ns = now;
        (*rec).duration_ns = now.wrapping_sub(st.ts_ns);
        (*rec).cpu_seq = seq;
        (*rec).pid_tgid = pid_tgid;
        (*rec).cgroup_id = bpf_get_current_cgroup_id();
        (*rec).flags = st.flags;
        (*rec).ret = ret;
        (*rec).arg0 = st.arg0;
        (*rec).arg1 = st.arg1;
        (*rec).uptr = st.uptr;
        (*rec).pidfd = pidfd;
        (*rec).cpu = bpf_get_smp_processor_id();
        (*rec).kind = kind;
        (*rec).mode = mode as u8;
        (*rec).hints = hints;
        (*rec)._pad = 0;
        (*rec).target_pid = st.target_pid;
        // The low half is the real uid (current_cred()->uid, initial user namespace).
        (*rec).uid = bpf_get_current_uid_gid() as u32;
        (*rec)._pad2 = 0;
        (*rec).child_pid = st.child_pid;
        // Read at entry where the entry program read it, else now.
        let (level, ns_pid) = if st.caller_level != CALLER_NS_UNREAD {
            (st.caller_level as u32, st.caller_ns_pid)
        } else {
            caller_ns()
        };
        (*rec).ns_pid = ns_pid;
        let is_clone = kind == EventKind::Clone as u8 || kind == EventKind::Clone3 as u8;
        // A clone's return value is the child's pid in the caller's namespace.
        (*rec).ns_other = if is_clone && level > 0 && ret > 0 { ret as i32 } else { st.ns_other };
        (*rec).xhints = st.xhints;
        // Byte stores: an array assignment becomes a call to a byte-loop memset.
        let pad3 = core::ptr::addr_of_mut!((*rec)._pad3) as *mut u8;
        pad3.write(0);
        pad3.add(1).write(0);
        pad3.add(2).write(0);
        let cg = core::ptr::addr_of_mut!((*rec).cgroup_name);
        cgroup_name(cg.cast(), CGROUP_NAME_BYTES as u32);
        copy_words(core::ptr::addr_of_mut!((*rec).facts), &st.facts);
        let path =
            if PATH && kind == EventKind::PidfdGetfd as u8 { crate::risk::path_scratch() } else { None };
        if let Some(p) = path {
            // Filled by exit_tail_path (or emptied by the exit that chose this program).
            copy_words(core::ptr::addr_of_mut!((*rec).path), p);
        } else {
            (*rec).path.depth = 0;
            (*rec).path.cut = 0;
            (*rec).path.more = 0;
        }
        // Zero-fills the buffer itself if it fails, so nothing uninitialised leaves.
        let thread_comm = core::ptr::addr_of_mut!((*rec).thread_comm);
        generated::bpf_get_current_comm(thread_comm.cast(), size_of::<[u8; 16]>() as u32);
        // The process's name is its thread-group leader's; the thread's when unreadable.
        // The leader's own calls (most calls) have it in hand already.
        let comm = core::ptr::addr_of_mut!((*rec).comm);
        if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
            copy_words(comm, thread_comm);
        } else if !leader_comm(comm.cast()) {
            generated::bpf_get_current_comm(comm.cast(), size_of::<[u8; 16]>() as u32);
        }
    }
    entry.submit(wakeup_flags());
}

const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(EventRecord, facts) % 8 == 0);
    assert!(offset_of!(EventRecord, path) % 8 == 0);
    assert!(offset_of!(EventRecord, comm) % 8 == 0);
    assert!(offset_of!(EventRecord, thread_comm) % 8 == 0);
    assert!(offset_of!(EnterState, facts) % 8 == 0);
    assert!(align_of::<EventRecord>() == 8 && align_of::<EnterState>() == 8);
};

/// Wake-up batching. A wake-up costs far more than the record itself (irq_work plus an IPI,
/// a VM exit under virtualisation, then a context switch in the agent), and the kernel's
/// default wakes the reader for every record whenever it has caught up, i.e. per event at
/// moderate rates. So records are submitted silently, and the reader is woken when the ring's
/// fill reaches a higher multiple of 1/`WAKEUP_FILL_DIVISOR` of its size than the last record
/// saw (`WAKE_LEVEL`; at most three wake-ups per fill, each draining what is there), and by
/// every record once the ring is 3/4 full, where a missed wake-up could lose records. Waking
/// for every record above 1/4 full, as before, made every record of a storm pay a wake-up (9%
/// of exit_tail_emit's samples in `native_write_msr`). The level is kept rather than the
/// crossing recomputed from this record's size, because another CPU's reservation between
/// this record's reserve and its query would hide the crossing from both. The agent also
/// drains on a fixed tick (pipeline.rs), which bounds how long a record can wait.
const WAKEUP_FILL_DIVISOR: u64 = 4;

/// The fill level (in quarters of the ring) the last record saw. Racy by design: two CPUs
/// that both see a new level both wake the reader, which costs one extra wake-up, never a
/// missed one.
static mut WAKE_LEVEL: u64 = 0;

#[inline(always)]
fn wakeup_flags() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let mark = EVENTS.query(BPF_RB_RING_SIZE as u64) / WAKEUP_FILL_DIVISOR;
    if mark == 0 {
        return BPF_RB_FORCE_WAKEUP as u64;
    }
    let level = avail / mark;
    // SAFETY: a plain u64 global of this object; volatile so that each run reads and writes it.
    let last = unsafe { core::ptr::read_volatile(&raw const WAKE_LEVEL) };
    if level != last {
        unsafe { core::ptr::write_volatile(&raw mut WAKE_LEVEL, level) };
    }
    if level > last || level >= WAKEUP_FILL_DIVISOR - 1 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn count_outcome<C: EbpfContext>(ctx: &C, kind: u8, hints: u8, st: &EnterState, ret: i64) {
    let signal = if kind == pidfd_trace_common::EventKind::PidfdSendSignal as u8
        || kind == pidfd_trace_common::EventKind::PidfdAutokill as u8
    {
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
        xhints: st.xhints & COUNTED_XHINTS,
        errno: if ret < 0 { (-ret) as u32 } else { 0 },
        flag_bits: if is_clone {
            (st.flags & clone_flags::PIDFD_CONFLICTS) as u32
        } else if kind == EventKind::PidfdGetfd as u8 && ret >= 0 && crate::risk::took_pidfd(&st.facts) {
            // A copy of a pidfd: also a created pidfd (README "Every way a pidfd is born").
            pidfd_trace_common::GETFD_COPIED_PIDFD
        } else if kind == EventKind::PidfdOpen as u8 {
            pidfd_open_flag_bits(st.flags)
        } else {
            0
        },
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

/// pidfd_open's flags as a counter key keeps them: PIDFD_THREAD (refused before 6.9) and one
/// bit for "any flag no kernel accepts", so the key space stays at four values.
#[inline(always)]
fn pidfd_open_flag_bits(flags: u64) -> u32 {
    const PIDFD_NONBLOCK: u64 = 0o4000;
    const PIDFD_THREAD: u64 = 0o200;
    let unknown = if flags & !(PIDFD_NONBLOCK | PIDFD_THREAD) != 0 { 0x8000_0000 } else { 0 };
    (flags & PIDFD_THREAD) as u32 | unknown
}
