//! Checks that turn a doomed start into one clear line: privileges and kernel BTF.
use std::path::{Path, PathBuf};

/// Where the running kernel exposes its BTF (`--btf`, PIDFD_TRACE_BTF, overrides it).
pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// A start that cannot work, said before anything is loaded.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The capabilities missing, e.g. `CAP_BPF+CAP_PERFMON`.
    #[error("missing capabilities {0}: run pidfd-trace as root (sudo) or grant CAP_BPF and CAP_PERFMON")]
    Privileges(String),
    #[error(
        "kernel BTF not found at {0}: this kernel was built without CONFIG_DEBUG_INFO_BTF; use a kernel with BTF (most distribution kernels since 5.4 have it)"
    )]
    /// No BTF file at this path.
    NoBtf(PathBuf),
}

/// The effective capability set of this process, from /proc/self/status.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Loading and attaching needs CAP_BPF+CAP_PERFMON (5.8+) or CAP_SYS_ADMIN.
pub fn check_privileges(caps: u64) -> Result<(), PreflightError> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
    Err(PreflightError::Privileges(missing.join("+")))
}

/// Whether the kernel BTF file exists (`NoBtf` if not).
pub fn check_btf(path: &Path) -> Result<(), PreflightError> {
    if path.is_file() { Ok(()) } else { Err(PreflightError::NoBtf(path.to_path_buf())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges() {
        assert!(check_privileges(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_privileges((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        let err = check_privileges(1 << CAP_BPF).unwrap_err().to_string();
        assert!(err.contains("CAP_PERFMON") && !err.contains("CAP_BPF+"), "{err}");
        assert!(check_privileges(0).unwrap_err().to_string().contains("CAP_BPF+CAP_PERFMON"));
    }
}
