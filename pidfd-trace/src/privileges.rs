//! Least privilege: once every program is attached the agent needs no capability at all
//! (maps and ring buffers are read through fds it already holds), so it gives them all up,
//! for good, before it reads anything an untrusted process controls.
use log::info;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("dropping capabilities failed: {0}")]
    Capset(std::io::Error),
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

/// Drops every capability of this (single-threaded) process: no_new_privs, the bounding set,
/// then the effective, permitted and inheritable sets. capset() changes only the calling
/// thread, so this refuses to claim success in a process that already runs other threads;
/// threads started afterwards inherit the empty sets and no_new_privs.
pub fn drop_all() -> Result<(), PrivilegeError> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
    if threads > 1 {
        return Err(PrivilegeError::Threads(threads));
    }
    let had = cap_field("CapEff").unwrap_or(0);
    // SAFETY: plain prctl/capset calls with valid arguments and local buffers.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(PrivilegeError::Capset(std::io::Error::last_os_error()));
        }
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .unwrap_or(40);
        for cap in 0..=last {
            // Fails without CAP_SETPCAP; the capset below still empties every set we hold.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(PrivilegeError::Capset(std::io::Error::last_os_error()));
        }
    }
    // What the kernel now says, not what we asked for.
    if let (Some(eff), Some(prm)) = (cap_field("CapEff"), cap_field("CapPrm"))
        && (eff | prm) != 0
    {
        return Err(PrivilegeError::Capset(std::io::Error::other(format!(
            "capabilities still held after capset: CapEff {eff:#x}, CapPrm {prm:#x}"
        ))));
    }
    // Worded without "attached": that word marks the one ready line (DESIGN.md).
    info!(
        "dropped all {} capabilities now that the probes are in place (CapEff was {had:#x}); the agent keeps none, no_new_privs set",
        had.count_ones()
    );
    Ok(())
}

/// A capability set of this thread from /proc/thread-self/status (`CapEff`, `CapPrm`, ...).
fn cap_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let v = status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    u64::from_str_radix(v.trim(), 16).ok()
}
