//! Word-at-a-time copies and zeroing for the kernel programs' records and states.
//!
//! A plain assignment or zero-initialisation of a struct this size compiles to a call of the
//! byte-at-a-time `memmove`/`memset` the BPF target links in (a BPF subprogram, ~5
//! instructions per byte; the object cannot bring its own: bpf-linker refuses a second
//! `memset`). These store 8 bytes at a time with volatile accesses, which LLVM neither turns
//! back into those calls nor drops. `T` must be a multiple of 8 bytes and both places 8-byte
//! aligned (asserted here and in emit.rs for every use).

/// Copies `*src` to `*dst` word by word (for `TargetFacts`, 96 bytes, the `memmove` call
/// was about 800 instructions per record).
///
/// # Safety
/// `src` valid for reads and `dst` for writes of a `T`, both 8-byte aligned.
#[inline(always)]
pub unsafe fn copy_words<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let (d, s) = (dst as *mut u64, src as *const u64);
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds of T; volatile so that LLVM does not turn the loop back into
        // a memmove call.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Sets every byte of `*dst` to zero, 8 bytes per store.
///
/// # Safety
/// `dst` is valid for writes of a `T` and 8-byte aligned.
#[inline(always)]
pub unsafe fn zero_words<T>(dst: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    let d = dst as *mut u64;
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds of T.
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
        i += 1;
    }
}
