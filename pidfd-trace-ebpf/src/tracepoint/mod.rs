//! Syscall tracepoint programs: the mode that works on every kernel with tracefs, including
//! hosts that refuse fentry and lack kprobes. Each syscall has an enter program that saves its
//! arguments per thread and an exit program that emits the outcome.
mod clone;
mod compat;
mod newtask;
mod paths;
mod pidfd;
mod uses;

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{PerCpuArray, ProgramArray},
    programs::TracePointContext,
};
use pidfd_trace_common::{
    CALLER_NS_UNREAD, EnterState, EventKind, Mode, TargetFacts, exit_tail, hints, stats, xhints,
};

use crate::{
    emit,
    globals::{tp_arg_off, tp_ret_off},
    maps::{IN_FLIGHT, USES_IN_FLIGHT, bump_stat, gate_add, is_open},
    state,
    words::{copy_words, zero_words},
};

/// Where every kernel we know puts a sys_enter record's first argument: after the 8-byte
/// common header and the 4-byte `__syscall_nr` (padded to 8).
const USUAL_ARG0_OFF: usize = 16;

/// Syscall argument `n` (0..=5) of a sys_enter record. When the agent has confirmed from the
/// format file that arguments start at the usual offset, this is a direct load from the
/// context (a constant offset the verifier accepts); otherwise a probe read at the offset the
/// agent passed in. The direct load is what lets sys_enter_clone turn a plain fork away for
/// about what the floor program costs: the helper call alone costs about a third of the floor.
#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    if tp_arg_off(0) == USUAL_ARG0_OFF {
        let args = unsafe { (ctx.as_ptr() as *const u64).add(USUAL_ARG0_OFF / 8) };
        // SAFETY: tracepoint programs may load from their context at constant, aligned
        // offsets; one arm per argument keeps each offset a constant.
        return unsafe {
            match n {
                0 => *args,
                1 => *args.add(1),
                2 => *args.add(2),
                3 => *args.add(3),
                4 => *args.add(4),
                5 => *args.add(5),
                _ => 0,
            }
        };
    }
    unsafe { ctx.read_at::<u64>(tp_arg_off(n)) }.unwrap_or(0)
}

/// Stores this thread's entry state and holds the kind's in-flight gate open until its exit:
/// calls that create pidfds open the gate of the function probes and the clone exit path,
/// calls that use one the gate of the use exits (`exit_use`).
#[inline(always)]
fn save(st: &EnterState) {
    let id = bpf_get_current_pid_tgid();
    if !state::store(id, st) {
        bump_stat(stats::ENTER_FAILED);
        return;
    }
    gate_add(gate(st.kind), 1);
}

/// Takes this thread's entry state into `dst` (the tail slot: no copy on the stack) if its
/// enter program stored one for a call of `kind`; false if there is none. A state of another
/// kind is a stale one, of a call whose exit was never seen (an exit program the kernel
/// skipped, a task-storage look-up refused on 5.13–6.1, the agent attaching between an
/// entry and its exit): it is dropped, and false returned, rather than reported with this
/// call's return value.
#[inline(always)]
fn take_into(id: u64, dst: &mut EnterState, kind: EventKind) -> bool {
    let Some(p) = state::current(id) else { return false };
    // SAFETY: a map value of this type, and the tail slot; both 8-aligned.
    unsafe { copy_words(dst, p) };
    state::end(id, p);
    gate_add(gate(dst.kind), u64::MAX);
    dst.hints &= !hints::ANON_PENDING;
    dst.kind == kind as u8
}

/// Takes this thread's entry state, if its enter program stored one.
#[inline(always)]
fn take(id: u64) -> Option<EnterState> {
    let p = state::current(id)?;
    // SAFETY: a map value pointer of this thread's state.
    let mut st = unsafe { *p };
    state::end(id, p);
    gate_add(gate(st.kind), u64::MAX);
    st.hints &= !hints::ANON_PENDING;
    Some(st)
}

#[inline(always)]
fn gate(kind: u8) -> &'static core::sync::atomic::AtomicU64 {
    if creates_pidfd(kind) { &IN_FLIGHT } else { &USES_IN_FLIGHT }
}

#[inline(always)]
fn creates_pidfd(kind: u8) -> bool {
    kind == EventKind::Clone as u8 || kind == EventKind::Clone3 as u8 || kind == EventKind::PidfdOpen as u8
}

/// The mode the record reports: upgraded by a function probe that saw the call.
#[inline(always)]
fn mode_of(st: &EnterState) -> Mode {
    Mode::from_u8(st.mode).unwrap_or(Mode::Tracepoint)
}

/// The `ret` of a sys_exit record: a direct context load at the usual offset (16) when the
/// agent confirmed it, else a probe read at the offset it passed (see `arg`).
#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    if tp_ret_off() == USUAL_ARG0_OFF {
        // SAFETY: constant, aligned offset inside the sys_exit record.
        return unsafe { *(ctx.as_ptr() as *const i64).add(USUAL_ARG0_OFF / 8) };
    }
    unsafe { ctx.read_at::<i64>(tp_ret_off()) }.unwrap_or(0)
}

/// Exit path shared by the pidfd_* syscalls, which need nothing beyond their arguments.
/// A failed call whose entry never fired was refused before the syscall ran (seccomp, a
/// tracer): it is reported as `denied` (`kind` names the syscall; `Waitid` never is, its exit
/// is hot and its entry filters on the id type).
#[inline(always)]
fn exit_simple(ctx: &TracePointContext, kind: EventKind, x: u8) {
    let id = bpf_get_current_pid_tgid();
    let ret = ret(ctx);
    // The record is written by a tail program (`exit_tail`), verified once for every exit
    // (a copy inlined in each exit program, twice in some, was past the 6.1 verifier's
    // budget or took it a minute under emulation).
    // A one-slot per-CPU array: the lookup cannot fail (else the state would stay taken).
    let Some(t) = tail_slot() else { return };
    if !take_into(id, &mut t.st, kind) {
        // Refused before it ran: no entry state. Only the pidfd_* syscalls, whose entries
        // store every call; the entries of waitid and the other uses keep only pidfd calls.
        let unfiltered =
            matches!(kind, EventKind::PidfdOpen | EventKind::PidfdGetfd | EventKind::PidfdSendSignal);
        if ret < 0 && unfiltered {
            init_entry(&mut t.st, kind, 0, 0, 0, 0, 0);
            t.st.xhints = xhints::DENIED;
        } else {
            return;
        }
    }
    let st = &mut t.st;
    st.xhints |= x;
    if kind == EventKind::PidfdOpen && ret >= 0 && st.xhints & xhints::DENIED == 0 {
        // The target as the kernel resolved it: the pid behind the pidfd it installed, with
        // its file's inode and filesystem (`pidfd_ino` on pidfs, 6.9+), as for every creation
        // path, in one walk of the fd table; a proven pidfd also teaches the reopen path the
        // pidfd `f_op`.
        if let Some(p) = crate::risk::new_pidfd(ret as u64) {
            // Only if that file is the process the caller named: another thread may have put
            // another pidfd at fd `ret` (dup2) between the install and this exit. The kernel
            // looked `pid` up in the caller's namespace, so its number there must be `pid`.
            let level = if st.caller_level != CALLER_NS_UNREAD { u32::from(st.caller_level) } else { 0 };
            let nr = p.nr_at(level);
            if nr == st.arg0 as i32 {
                st.target_pid =
                    if level == 0 { p.facts_nr(&mut st.facts, nr) } else { p.facts(&mut st.facts) };
                st.xhints |= xhints::TARGET_CHECKED;
            }
        } else {
            // Offsets for the fast walk unknown on this kernel: the general resolver.
            let t = crate::task::fd_target(ret as u64, false, 0);
            if t.checked {
                st.target_pid = t.host;
                st.xhints |= xhints::TARGET_CHECKED;
            }
        }
    }
    t.id = id;
    t.ret = ret;
    t.hint = -1;
    t.pidfd = -1;
    t.extra = 0;
    // Only pidfd_getfd records carry a file path (a 32-bit caller's kind is known at run time):
    // the path walk, then the record with it; straight to the record (no path) if this kernel
    // refused the walk.
    if kind == EventKind::PidfdGetfd || x & xhints::COMPAT != 0 {
        crate::risk::clear_path();
        tail(ctx, exit_tail::PATH);
        tail(ctx, exit_tail::EMIT_PATH);
    } else {
        tail(ctx, exit_tail::EMIT);
    }
}

/// What a syscall exit hands to its tail programs (`exit_tail`). One slot per CPU: a tail
/// call runs on the same CPU, in the same program run, without sleeping.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExitTail {
    st: EnterState,
    id: u64,
    ret: i64,
    /// The pidfd number read back from user memory (a hint), -1 if unreadable.
    hint: i64,
    /// x86_64 syscall number of the call (DENIED), 0 for 32-bit callers.
    nr: u64,
    pidfd: i32,
    extra: u8,
    _pad: [u8; 3],
}

#[map]
static EXIT_TAIL_STATE: PerCpuArray<ExitTail> = PerCpuArray::with_max_entries(1, 0);

#[map]
static EXIT_TAIL: ProgramArray = ProgramArray::with_max_entries(exit_tail::SLOTS, 0);

#[inline(always)]
pub(super) fn tail_slot() -> Option<&'static mut ExitTail> {
    // SAFETY: this CPU's slot of a per-CPU array; nothing else runs on it until the
    // program chain ends.
    EXIT_TAIL_STATE.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Jumps to tail program `idx`; returns only when its slot is empty (the agent could not
/// load it on this kernel).
#[inline(always)]
pub(super) fn tail<C: EbpfContext>(ctx: &C, idx: u32) {
    // SAFETY: the program array holds only tracepoint programs of this object.
    unsafe { EXIT_TAIL.tail_call(ctx, idx) };
}

// prototype: syscall:*/0: none: a tail program in EXIT_TAIL, entered by bpf_tail_call from a syscall exit program (same tracepoint context), never attached itself [5.10-7.3]
/// Last step of every exit that reports: the record and the counter.
#[tracepoint(category = "syscalls", name = "exit_tail_emit")]
pub fn exit_tail_emit(ctx: TracePointContext) -> u32 {
    if let Some(t) = tail_slot() {
        emit::finish::<_, false>(&ctx, &t.st, t.id, t.ret, t.pidfd, t.extra, mode_of(&t.st));
    }
    0
}

// prototype: syscall:*/0: none: a tail program in EXIT_TAIL, entered by bpf_tail_call from a syscall exit program (same tracepoint context), never attached itself [5.10-7.3]
/// A pidfd_getfd's file path into the path scratch, then the record (`exit_tail_emit_path`).
#[tracepoint(category = "syscalls", name = "exit_tail_path")]
pub fn exit_tail_path(ctx: TracePointContext) -> u32 {
    if let Some(t) = tail_slot()
        && let Some(out) = crate::risk::path_scratch()
    {
        crate::risk::file_path(out, &t.st, t.ret);
    }
    tail(&ctx, exit_tail::EMIT_PATH);
    0
}

// prototype: syscall:*/0: none: a tail program in EXIT_TAIL, entered by bpf_tail_call from a syscall entry program or from itself (same tracepoint context), never attached itself [5.10-7.3]
/// One level of the container walk of a pidfd_getfd / pidfd_send_signal entry (risk.rs
/// `container_step`), then itself again for the next level.
#[tracepoint(category = "syscalls", name = "enter_tail_container")]
pub fn enter_tail_container(ctx: TracePointContext) -> u32 {
    if crate::risk::container_step() {
        tail(&ctx, exit_tail::CONTAINER);
    }
    0
}

// prototype: syscall:*/0: none: a tail program in EXIT_TAIL, entered by bpf_tail_call from a syscall exit program (same tracepoint context), never attached itself [5.10-7.3]
/// The same for exits whose record may be a pidfd_getfd's: with the file path from the path
/// scratch.
#[tracepoint(category = "syscalls", name = "exit_tail_emit_path")]
pub fn exit_tail_emit_path(ctx: TracePointContext) -> u32 {
    if let Some(t) = tail_slot() {
        emit::finish::<_, true>(&ctx, &t.st, t.id, t.ret, t.pidfd, t.extra, mode_of(&t.st));
    }
    0
}

/// Exit path of the calls that use a pidfd: returns before any map look-up unless such a
/// call is in flight somewhere on the host (hot syscalls such as waitid exit here for every
/// call, pidfd or not).
#[inline(always)]
fn exit_use(ctx: &TracePointContext, kind: EventKind) {
    if !is_open(&USES_IN_FLIGHT) {
        return;
    }
    exit_simple(ctx, kind, 0);
}

/// A fresh entry state as the tracepoints see a call; function probes may add to it later.
/// On the stack: for function probes, which must not use the per-CPU scratch slot
/// (`ENTRY_SCRATCH`), and the rarer paths. The hot syscall entries use `entry_slot`.
#[inline(always)]
pub(crate) fn entry(
    kind: EventKind,
    flags: u64,
    arg0: u64,
    arg1: u64,
    uptr: u64,
    target_pid: i32,
) -> EnterState {
    EnterState {
        ts_ns: now(),
        flags,
        arg0,
        arg1,
        uptr,
        kind: kind as u8,
        hints: 0,
        mode: Mode::Tracepoint as u8,
        live: 0,
        target_pid,
        facts: TargetFacts::ZERO,
        kflags: 0,
        uargs: 0,
        usize: 0,
        child_pid: 0,
        ns_other: 0,
        xhints: 0,
        caller_level: pidfd_trace_common::CALLER_NS_UNREAD,
        _pad2: 0,
        caller_ns_pid: 0,
    }
}

/// Where the hot syscall entries build their state (`entry_slot`) before `save` copies it
/// into the thread's entry state (state.rs). One per CPU, like the tail slot: only syscall tracepoint programs and
/// their tail calls use either, and those run to their end with preemption disabled
/// (perf_syscall_enter/exit, kernel/trace/trace_syscalls.c; `__DO_TRACE` before 6.14) and
/// under `bpf_prog_active`, so no other tracepoint or kprobe program of ours runs on that CPU
/// meanwhile. Function probes (fentry/fexit, which run with only migration disabled, and
/// `autokill_sig_fexit`, which can run in hard IRQ) must build theirs on the stack (`entry`).
#[map]
static ENTRY_SCRATCH: PerCpuArray<EnterState> = PerCpuArray::with_max_entries(1, 0);

/// `entry`, written in this CPU's scratch slot (`init_entry`) instead of on the stack; None
/// only if the slot cannot be had (never: a one-slot per-CPU array).
#[inline(always)]
pub(crate) fn entry_slot(
    kind: EventKind,
    flags: u64,
    arg0: u64,
    arg1: u64,
    uptr: u64,
    target_pid: i32,
) -> Option<&'static mut EnterState> {
    let p = ENTRY_SCRATCH.get_ptr_mut(0)?;
    init_entry(p, kind, flags, arg0, arg1, uptr, target_pid);
    // SAFETY: this CPU's slot, fully written; nothing else uses it until this program ends.
    Some(unsafe { &mut *p })
}

/// Writes a fresh entry state (`entry`) at `st`, which is not on the stack (the scratch slot,
/// the tail slot): all zero as 8-byte stores (`zero_words`), then the non-zero fields. The
/// struct literal of `entry`, with this many zero fields, becomes a `memset` of an odd-offset
/// stack range, which the BPF target lowers to a call of its byte-at-a-time `memset`
/// subprogram: ~750 instructions, 18% of sys_enter_pidfd_open's samples under `perf`
/// (BENCHMARKS.md). Volatile zeroing on the stack instead is past the 512-byte stack limit in
/// programs that inline several entries (compat_sys_enter, the funnel's).
#[inline(always)]
pub(crate) fn init_entry(
    st: *mut EnterState,
    kind: EventKind,
    flags: u64,
    arg0: u64,
    arg1: u64,
    uptr: u64,
    target_pid: i32,
) {
    // SAFETY: the caller's `st` is valid for writes and 8-aligned (an EnterState's alignment).
    // Volatile like the zeroing: plain stores of arguments that are constant zero after
    // inlining would be merged into a `memset` call again.
    unsafe {
        use core::ptr::{addr_of_mut, write_volatile as w};
        zero_words(st);
        w(addr_of_mut!((*st).ts_ns), now());
        w(addr_of_mut!((*st).flags), flags);
        w(addr_of_mut!((*st).arg0), arg0);
        w(addr_of_mut!((*st).arg1), arg1);
        w(addr_of_mut!((*st).uptr), uptr);
        w(addr_of_mut!((*st).kind), kind as u8);
        w(addr_of_mut!((*st).mode), Mode::Tracepoint as u8);
        w(addr_of_mut!((*st).target_pid), target_pid);
        w(addr_of_mut!((*st).caller_level), pidfd_trace_common::CALLER_NS_UNREAD);
    }
}

#[inline(always)]
fn now() -> u64 {
    unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() }
}
