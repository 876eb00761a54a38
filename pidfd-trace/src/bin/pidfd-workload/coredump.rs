//! The coredump helper's pidfd (6.16+): with `core_pattern = |<helper> %F` the kernel starts
//! the helper with the crashed process's pidfd at fd 3 (fs/coredump.c umh_coredump_setup,
//! COREDUMP_PIDFD_NUMBER), with no syscall by anyone. This module is both sides: the helper
//! (`pidfd-workload coredump-helper <report> <fd>`) and the crash that starts it.
//!
//! Changing `core_pattern` is host-wide, so the suite does this only in a VM guest
//! (`PIDFD_WORKLOAD_GUEST=1`, set by the guest's init) and puts the old pattern back.
use std::{path::Path, time::Duration};

use serde_json::{Value, json};

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const CORE_PIPE_LIMIT: &str = "/proc/sys/kernel/core_pipe_limit";
const REPORT: &str = "/tmp/pidfd-workload-coredump.json";

/// The helper the kernel starts: drains the core from stdin, then writes to `report` what it
/// found at fd `fd` (its pid, the pidfd's pidfs inode and the pid fdinfo names) as JSON.
pub fn helper(report: &Path, fd: Option<i32>) -> std::process::ExitCode {
    // A kernel without the `%F` specifier expands it to an empty argument: no pidfd.
    let fd = fd.unwrap_or(-1);
    // Before the core is drained: the crashed process lives until then (core_pipe_limit 1
    // also makes the kernel wait for this helper to exit).
    let ino = crate::paths::pidfd_ino(i64::from(fd));
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let target =
        fdinfo.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse::<i64>().ok());
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    let out = json!({"pid": std::process::id(), "fd": fd, "pidfd_ino": ino, "target_pid": target});
    let _ = std::fs::write(report, out.to_string());
    std::process::ExitCode::SUCCESS
}

/// Sets `core_pattern` to this executable as the helper, crashes a child (SIGABRT) and waits
/// for the helper's report; puts the old pattern back. `Ok((child, report))`, `report` being
/// what the helper found (`pidfd_ino` null: this kernel gave it no pidfd).
pub fn crash(timeout: Duration) -> Result<(i32, Value), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let old = std::fs::read_to_string(CORE_PATTERN).map_err(|e| format!("{CORE_PATTERN}: {e}"))?;
    let old_limit = std::fs::read_to_string(CORE_PIPE_LIMIT).ok();
    // The crashed process stays until the helper exits (fs/coredump.c wait_for_dump_helpers).
    let _ = std::fs::write(CORE_PIPE_LIMIT, "1");
    let _ = std::fs::remove_file(REPORT);
    let pattern = format!("|{} coredump-helper {REPORT} %F", exe.display());
    std::fs::write(CORE_PATTERN, &pattern).map_err(|e| format!("{CORE_PATTERN}: {e}"))?;
    let result = (|| {
        // SAFETY: the child only calls async-signal-safe functions before it dies.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
                libc::setrlimit(libc::RLIMIT_CORE, &unlimited);
                libc::abort();
            }
        }
        if child < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        let mut status = 0;
        unsafe { libc::waitpid(child, &mut status, 0) };
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Ok(s) = std::fs::read_to_string(REPORT)
                && let Ok(v) = serde_json::from_str::<Value>(&s)
            {
                return Ok((child, v));
            }
            if std::time::Instant::now() > end {
                return Err(format!(
                    "core_pattern {pattern:?}: no helper report after the crash of {child} (wait status {status:#x}); kernel log: {}",
                    kernel_log_about_cores()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    let _ = std::fs::write(CORE_PATTERN, old.trim_end());
    if let Some(l) = old_limit {
        let _ = std::fs::write(CORE_PIPE_LIMIT, l.trim_end());
    }
    result
}

/// The kernel log's lines about core dumps (`/dev/kmsg`, read without blocking), for a
/// failure's detail: why the kernel did not start or feed the helper.
fn kernel_log_about_cores() -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg")
    else {
        return "unreadable".into();
    };
    let mut lines = Vec::new();
    let mut buf = [0u8; 8192];
    // One record per read; EAGAIN at the end.
    while let Ok(n) = f.read(&mut buf) {
        let rec = String::from_utf8_lossy(&buf[..n]);
        let msg = rec.split_once(';').map_or(rec.as_ref(), |(_, m)| m).trim_end().to_string();
        if msg.to_lowercase().contains("core") {
            lines.push(msg);
        }
    }
    let n = lines.len();
    lines.into_iter().skip(n.saturating_sub(5)).collect::<Vec<_>>().join(" | ")
}
