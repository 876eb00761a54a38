//! Per-thread entry state: what a call's entry program leaves for the hooks that see it
//! later on the same thread and for its exit. Two stores, one chosen by the agent at load
//! time (`STATE_IN_TASK`; `check` shows it as `entry_state`, docs/cli.md):
//! - task-local storage (`TASK_STATE`, BPF_MAP_TYPE_TASK_STORAGE): where the kernel lets
//!   tracepoint, raw tracepoint and kprobe programs call `bpf_task_storage_get` and
//!   `bpf_get_current_task_btf` (5.12+; probed by the agent, not assumed from a version).
//!   The slot lives in the task itself: storing is a look-up of the task's own storage and a
//!   copy into it, ending is one store (`live` = 0). No hash bucket, no LRU list, no delete,
//!   nothing to evict, and the kernel frees the slot with the task. The LRU hash update was
//!   half of sys_enter_pidfd_open's time under `perf` (BENCHMARKS.md). A slot costs about
//!   0.6 KiB of kernel memory per thread that ever made a call we keep state for, until that
//!   thread exits. When the task store cannot take a state (no memory; on 5.13–6.1 also
//!   while any task-storage user holds this CPU's `bpf_task_storage_busy`), it goes to the
//!   hash (`live` = 2) instead, so that the call is still reported as it was, not as denied.
//!   On kernels without task storage the agent creates `TASK_STATE` as a socket-storage map
//!   no program uses (pidfd-trace/src/probes/state.rs): that needs `CONFIG_NET` and the
//!   object's BTF loaded, as socket storage does.
//! - the `ENTER_STATE` LRU hash keyed by pid_tgid, everywhere else (5.10, 5.11).
//!
//! The code of the store not taken is dead code the verifier never walks: `STATE_IN_TASK` is
//! read-only data the agent fixes before loading.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
    macros::btf_map,
};
use pidfd_trace_common::EnterState;

use core::sync::atomic::AtomicU64;

use crate::{
    maps::{ENTER_STATE, gate_add, is_open},
    words::copy_words,
};

/// A BPF_MAP_TYPE_TASK_STORAGE map definition in BTF form (aya-ebpf 0.2 has none; the shape
/// is its `btf_map_def!`: libbpf's `__uint(type, ...)` members as pointers to arrays).
/// Task storage needs `BPF_F_NO_PREALLOC`, `max_entries` 0 and an `int` key
/// (kernel/bpf/bpf_local_storage.c `bpf_local_storage_map_alloc_check`).
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader reads from BTF; never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current task's slot; created (all zero) when `create` and there is none. Null
    /// when it cannot be had: no memory, or (5.13–6.1, kernel/bpf/bpf_task_storage.c
    /// `bpf_task_storage_trylock`) while anything holds this CPU's task-storage lock; on 6.2+
    /// only a creation can fail that way.
    #[inline(always)]
    fn current(&self, create: bool) -> *mut T {
        let flags = if create { BPF_LOCAL_STORAGE_GET_F_CREATE as u64 } else { 0 };
        // SAFETY: the helper takes the map and a BTF task pointer; it checks everything else.
        unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                bpf_get_current_task_btf(),
                core::ptr::null_mut(),
                flags,
            )
        }
        .cast()
    }
}

/// Each thread's entry state in task-local storage (see the module doc). The agent's loader
/// turns this definition into an unused socket-storage map on kernels that cannot use it
/// (pidfd-trace/src/probes/state.rs), so that the object loads everywhere.
#[btf_map]
pub static TASK_STATE: TaskStorage<EnterState> = TaskStorage::new();

/// 1: entry states live in `TASK_STATE`; 0: in `ENTER_STATE`. Set by the agent at load time.
#[unsafe(no_mangle)]
static STATE_IN_TASK: u8 = 0;

#[inline(always)]
fn in_task() -> bool {
    // SAFETY: a read of our own read-only global.
    unsafe { core::ptr::read_volatile(&STATE_IN_TASK) != 0 }
}

/// States in the `ENTER_STATE` hash although the task store is on (`live` = 2): while it is 0,
/// a thread without a task slot has no state, with no hash look-up. A fallback state whose
/// thread died before its exit keeps it above 0 (only costing that look-up) until the agent
/// restarts.
static HASH_FALLBACK: AtomicU64 = AtomicU64::new(0);

/// `live` of a task-store state that went to the hash.
const LIVE_IN_HASH: u8 = 2;

/// The calling thread (`id`: its pid_tgid, from `bpf_get_current_pid_tgid`; both stores
/// only ever hold the current thread's state) has a call between entry and exit: its state.
/// With the task store, a state in the hash (`live` = 2) comes first: it is newer than
/// anything left in the task slot, which a look-up refused on 5.13–6.1 can leave live.
#[inline(always)]
pub fn current(id: u64) -> Option<*mut EnterState> {
    if in_task() {
        if is_open(&HASH_FALLBACK)
            && let Some(h) = ENTER_STATE.get_ptr_mut(&id)
            // SAFETY: a map value pointer.
            && unsafe { (*h).live } == LIVE_IN_HASH
        {
            return Some(h);
        }
        let p = TASK_STATE.current(false);
        // SAFETY: a map value pointer, checked for null first.
        if !p.is_null() && unsafe { (*p).live } != 0 {
            return Some(p);
        }
        return None;
    }
    ENTER_STATE.get_ptr_mut(&id)
}

/// Stores `st` as the calling thread's entry state; false when it could not be stored.
#[inline(always)]
pub fn store(id: u64, st: &EnterState) -> bool {
    if !in_task() {
        return ENTER_STATE.insert(&id, st, 0).is_ok();
    }
    let p = TASK_STATE.current(true);
    if !p.is_null() {
        // SAFETY: a map value of this type and `st`, both 8-aligned.
        unsafe {
            copy_words(p, st);
            (*p).live = 1;
        }
        return true;
    }
    // The hash takes it, marked as such (`end` deletes it there). Until the mark is written
    // `current` ignores the entry, so an entry whose mark could not be written (evicted in
    // between) is never taken, and is not counted as stored.
    if ENTER_STATE.insert(&id, st, 0).is_err() {
        return false;
    }
    let Some(h) = ENTER_STATE.get_ptr_mut(&id) else { return false };
    // SAFETY: the map value just inserted.
    unsafe { (*h).live = LIVE_IN_HASH };
    gate_add(&HASH_FALLBACK, 1);
    true
}

/// Ends the calling thread's entry state `p` (from `current`): its exit has taken it.
#[inline(always)]
pub fn end(id: u64, p: *mut EnterState) {
    if in_task() {
        // SAFETY: `p` is this thread's state, from `current`.
        if unsafe { (*p).live } != LIVE_IN_HASH {
            // SAFETY: as above.
            unsafe { (*p).live = 0 };
            return;
        }
        gate_add(&HASH_FALLBACK, u64::MAX);
    }
    let _ = ENTER_STATE.remove(&id);
}
