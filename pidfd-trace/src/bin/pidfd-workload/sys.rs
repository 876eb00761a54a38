//! Raw syscalls the scenarios need, with errno returned as a negative value (kernel style) so
//! the expectation can be compared with the agent's `ret` exactly.
use std::arch::asm;

pub const CLONE_PIDFD: u64 = 0x1000;
pub const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
pub const CLONE_THREAD: u64 = 0x0001_0000;
pub const CLONE_VM: u64 = 0x100;
pub const CLONE_SIGHAND: u64 = 0x800;
pub const SIGCHLD: u64 = 17;

fn ret(r: libc::c_long) -> i64 {
    if r < 0 { -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64) } else { r }
}

/// Fork-like legacy clone(2) (no new stack); the child exits at once.
pub fn clone_fork(flags: u64, parent_tid: *mut i32) -> i64 {
    // SAFETY: without CLONE_VM the child has its own copy of memory; it only calls _exit.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, parent_tid, 0usize, 0usize) };
    if r == 0 {
        unsafe { libc::_exit(0) };
    }
    ret(r)
}

/// `struct clone_args` (uapi), version 0 size.
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
}

/// Fork-like clone3(2); the child exits at once.
pub fn clone3_fork(args: &mut CloneArgs) -> i64 {
    // SAFETY: as clone_fork.
    let r = unsafe { libc::syscall(libc::SYS_clone3, args as *mut CloneArgs, size_of::<CloneArgs>()) };
    if r == 0 {
        unsafe { libc::_exit(0) };
    }
    ret(r)
}

/// clone3 that creates a thread on `stack`; the new thread exits immediately from assembly,
/// never touching Rust state. Returns the new tid or -errno.
pub fn clone3_thread(args: &mut CloneArgs) -> i64 {
    let mut r: i64 = libc::SYS_clone3;
    // SAFETY: the child runs only the three instructions after `syscall` on its own stack
    // and exits with SYS_exit; the parent continues normally.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov eax, 60",
            "xor edi, edi",
            "syscall",
            "2:",
            inout("rax") r,
            in("rdi") args as *mut CloneArgs,
            in("rsi") size_of::<CloneArgs>(),
            out("rcx") _, out("r11") _,
            options(nostack)
        );
    }
    // SAFETY: as above; arm64 passes the number in x8 and returns in x0, and exit is 93.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        asm!(
            "svc #0",
            "cbnz x0, 2f",
            "mov x8, #93",
            "svc #0",
            "2:",
            inout("x8") r => _,
            inlateout("x0") args as *mut CloneArgs as i64 => r,
            in("x1") size_of::<CloneArgs>(),
            options(nostack)
        );
    }
    r
}

pub fn pidfd_open(pid: i32, flags: u32) -> i64 {
    ret(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })
}

pub fn pidfd_send_signal(pidfd: i32, sig: i32) -> i64 {
    ret(unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, std::ptr::null::<u8>(), 0) })
}

pub fn pidfd_getfd(pidfd: i32, fd: i32) -> i64 {
    ret(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) })
}

/// A child that sleeps until killed; returns its pid.
pub fn sleeper() -> i32 {
    // SAFETY: the scenario process is single-threaded; the child only pauses.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        loop {
            unsafe { libc::pause() };
        }
    }
    pid
}

pub fn reap(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

pub fn wait_child(pid: i64) {
    if pid > 0 {
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::__WALL) };
    }
}

pub fn gettid() -> i32 {
    unsafe { libc::gettid() }
}

/// Ends the calling thread only (the exit syscall, not exit_group); the process lives on
/// while other threads do. If the caller is the main thread, it stays a zombie thread-group
/// leader, as after pthread_exit() in C's main. (libc::pthread_exit cannot be used from
/// Rust's main: its forced unwind reaches the runtime's catch_unwind, and glibc aborts with
/// "FATAL: exception not rethrown".)
pub fn exit_thread() -> ! {
    // SAFETY: ends this thread without unwinding; nothing on its stack is used afterwards
    // (the other threads own everything they touch).
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("exit returned")
}

pub fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name).expect("no NUL");
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
}
