//! Least privilege: once every program is attached the agent gives up, for good, every
//! capability it no longer needs before it reads anything an untrusted process controls.
//! Usually that is all of them: maps and ring buffers are used through fds it already holds.
//! Kernels before 6.5 with unprivileged BPF disabled check every bpf() call, map look-ups
//! included, so there the agent keeps CAP_BPF (CAP_SYS_ADMIN before 5.8) and nothing else.
//! Which case applies is found out by trying, never from the version number.
use log::info;

use crate::probes::MapProbe;

/// Dropping capabilities after attaching failed; the agent stops rather than run privileged.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// prctl/capset failed, or capabilities remained afterwards.
    #[error("dropping capabilities failed: {0}")]
    Capset(std::io::Error),
    /// The process already runs this many threads (capset is per thread).
    #[error("capabilities dropped but the agent runs {0} threads: drop them before starting threads")]
    Threads(usize),
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_SYS_ADMIN: i32 = 21;
const CAP_BPF: i32 = 39;
/// Drops every capability of this (single-threaded) process that reading `map` does not
/// need: no_new_privs, the bounding set, then the effective, permitted and inheritable sets.
/// capset() changes only the calling thread, so this refuses to claim success in a process
/// that already runs other threads; threads started afterwards inherit the reduced sets.
pub fn drop_all(map: MapProbe) -> Result<(), PrivilegeError> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
    if threads > 1 {
        return Err(PrivilegeError::Threads(threads));
    }
    let had = cap_field("CapEff").unwrap_or(0);
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(40);
    let keep: Option<(i32, &str)> = if map_readable_without_caps(&map) {
        None
    } else if last >= CAP_BPF {
        Some((CAP_BPF, "CAP_BPF"))
    } else {
        Some((CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
    };
    let keep_mask: u64 = keep.map_or(0, |(c, _)| 1u64 << c);
    // SAFETY: plain prctl/capset calls with valid arguments and local buffers.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(PrivilegeError::Capset(std::io::Error::last_os_error()));
        }
        for cap in (0..=last).filter(|c| keep_mask & (1u64 << c) == 0) {
            // Fails without CAP_SETPCAP; the capset below still empties every set we hold.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = cap_data(keep_mask);
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(PrivilegeError::Capset(std::io::Error::last_os_error()));
        }
    }
    // What the kernel now says, not what we asked for.
    if let (Some(eff), Some(prm)) = (cap_field("CapEff"), cap_field("CapPrm"))
        && (eff | prm) & !keep_mask != 0
    {
        return Err(PrivilegeError::Capset(std::io::Error::other(format!(
            "capabilities still held after capset: CapEff {eff:#x}, CapPrm {prm:#x}"
        ))));
    }
    // Worded without "attached": that word marks the one ready line (docs/cli.md).
    match keep {
        None => info!(
            "dropped all {} capabilities now that the probes are in place (CapEff was {had:#x}); the agent keeps none, no_new_privs set",
            had.count_ones()
        ),
        Some((_, name)) => info!(
            "dropped {} capabilities now that the probes are in place (CapEff was {had:#x}); the agent keeps only {name}: this kernel checks every bpf() call, map reads included (kernel.unprivileged_bpf_disabled={}); no_new_privs set",
            had.count_ones().saturating_sub(1),
            std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap_or_default().trim()
        ),
    }
    Ok(())
}

/// A capability set of this thread from /proc/thread-self/status (`CapEff`, `CapPrm`, ...).
fn cap_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let v = status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

/// The two 32-bit halves capset() takes for a 64-bit capability mask.
fn cap_data(mask: u64) -> [CapData; 2] {
    let half = |m: u32| CapData { effective: m, permitted: m, inheritable: 0 };
    [half(mask as u32), half((mask >> 32) as u32)]
}

/// Whether a process without any capability can read `map`: tried in a forked child that
/// empties its capability sets and looks up key 0. The agent is single-threaded here, and
/// the child makes only raw system calls before `_exit`.
fn map_readable_without_caps(map: &MapProbe) -> bool {
    let mut value = vec![0u8; map.value_size.max(8)];
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let empty = cap_data(0);
    // SAFETY: fork in a single-threaded process; the child only calls capset, bpf and _exit
    // on memory prepared before the fork.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let ok = libc::syscall(libc::SYS_capset, &mut header, empty.as_ptr()) == 0
                && map.lookup_raw(&mut value);
            libc::_exit(if ok { 0 } else { 1 });
        }
        if pid < 0 {
            return false;
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}
