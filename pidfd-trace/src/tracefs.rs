//! tracefs: finding or mounting it, and reading tracepoint format files, whose field offsets
//! the kernel programs are given instead of compiled-in numbers.
use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

/// tracefs or a tracepoint format file the agent needs is missing or unusable.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}); mount it with `mount -t tracefs tracefs /sys/kernel/tracing` or run as root"
    )]
    /// No tracefs, and mounting one failed.
    Mount(std::io::Error),
    /// tracefs is mounted but this user cannot reach into it (mode 0700 without root or
    /// CAP_DAC_READ_SEARCH).
    #[error(
        "tracefs is mounted at {path} but uid {uid} cannot read it (mode {mode:04o}, owner uid {owner}); run as root, add CAP_DAC_READ_SEARCH to CAP_BPF+CAP_PERFMON, or remount it readable: `mount -o remount,mode=755 {path}`"
    )]
    Unreadable {
        /// The tracefs mount.
        path: PathBuf,
        /// This process's real uid.
        uid: u32,
        /// The mount's permission bits.
        mode: u32,
        /// The mount's owner.
        owner: u32,
    },
    /// `category:name` (or a field of it) absent.
    #[error("tracepoint {0} not found in tracefs: this kernel lacks it (CONFIG_FTRACE_SYSCALLS off?)")]
    MissingTracepoint(String),
    /// A format file could not be read.
    #[error("cannot read {path}: {err}; run as root (tracefs is readable by root only)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    #[error(
        "tracepoint {tp}: field `{field}` is at offset {found}, expected {expected}; this kernel's syscall record layout is not supported"
    )]
    /// A syscall argument is not where the programs read it.
    Layout {
        /// `syscalls:sys_enter_<name>`.
        tp: String,
        /// The argument's field name.
        field: String,
        /// Its offset in the format file, bytes.
        found: u32,
        /// Where the programs read it, bytes.
        expected: u32,
    },
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounting it at /sys/kernel/tracing when no copy is mounted (some hosts
/// boot without it). Returns the root and whether we mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    if let Some(p) = CANDIDATES.iter().map(Path::new).find(|p| p.join("events").is_dir()) {
        return Ok((p.to_path_buf(), false));
    }
    // Mounted but closed to us (tracefs is mode 0700 on many hosts; without root or
    // CAP_DAC_READ_SEARCH its files cannot be reached): say so, rather than "not mounted".
    for p in CANDIDATES.iter().map(Path::new) {
        if is_tracefs(p)
            && let Err(e) = std::fs::metadata(p.join("events"))
            && e.kind() == std::io::ErrorKind::PermissionDenied
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(p).ok();
            return Err(TracefsError::Unreadable {
                path: p.to_path_buf(),
                // SAFETY: getuid has no preconditions.
                uid: unsafe { libc::getuid() },
                mode: meta.as_ref().map_or(0, |m| m.mode() & 0o7777),
                owner: meta.as_ref().map_or(0, |m| m.uid()),
            });
        }
    }
    let target = CString::new(CANDIDATES[0]).expect("no NUL");
    let fstype = CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok((PathBuf::from(CANDIDATES[0]), true))
}

/// Whether a tracefs is mounted at `p` (statfs needs no permission on `p` itself).
fn is_tracefs(p: &Path) -> bool {
    const TRACEFS_MAGIC: libc::c_long = 0x7472_6163;
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: an all-zero statfs is valid; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as libc::c_long == TRACEFS_MAGIC }
}

/// Field name → byte offset of one tracepoint's record.
pub fn field_offsets(root: &Path, category: &str, name: &str) -> Result<HashMap<String, u32>, TracefsError> {
    let dir = root.join("events").join(category).join(name);
    if !dir.is_dir() {
        return Err(TracefsError::MissingTracepoint(format!("{category}:{name}")));
    }
    let path = dir.join("format");
    let text = std::fs::read_to_string(&path).map_err(|err| TracefsError::Read { path, err })?;
    Ok(parse_format(&text))
}

/// Parses lines like `field:unsigned long clone_flags;<TAB>offset:16;<TAB>size:8;<TAB>signed:0;`.
pub fn parse_format(text: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else { continue };
        let mut parts = rest.split(';');
        let decl = parts.next().unwrap_or("");
        let name = decl.rsplit(|c: char| c.is_whitespace() || c == '*').next().unwrap_or("");
        let name = name.split('[').next().unwrap_or(name);
        let offset = parts.find_map(|p| p.trim().strip_prefix("offset:")).and_then(|v| v.parse().ok());
        if let (false, Some(off)) = (name.is_empty(), offset) {
            out.insert(name.to_string(), off);
        }
    }
    out
}

/// Offsets the programs use: the first syscall argument and `ret`. Every argument we read
/// must sit at `arg0 + 8 * index`, as the programs assume; anything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallLayout {
    /// Byte offset of argument 0 in every sys_enter record.
    pub arg0: u32,
    /// Byte offset of `ret` in every sys_exit record.
    pub ret: u32,
}

/// Reads and checks the format files of every hook table row's tracepoints (`root`: the
/// tracefs root). Errors name the tracepoint and field.
pub fn syscall_layout(root: &Path) -> Result<SyscallLayout, TracefsError> {
    let mut layout: Option<SyscallLayout> = None;
    for hook in crate::hooks::events() {
        let (sys, args) = (hook.name(), hook.tracepoint.args);
        let enter = field_offsets(root, "syscalls", &format!("sys_enter_{sys}"))?;
        let exit_tp = format!("sys_exit_{sys}");
        let exit = field_offsets(root, "syscalls", &exit_tp)?;
        let arg0 = *enter.get(args[0]).ok_or_else(|| {
            TracefsError::MissingTracepoint(format!("syscalls:sys_enter_{sys} field {}", args[0]))
        })?;
        let ret = *exit
            .get("ret")
            .ok_or_else(|| TracefsError::MissingTracepoint(format!("syscalls:{exit_tp} field ret")))?;
        let want = *layout.get_or_insert(SyscallLayout { arg0, ret });
        for (i, a) in args.iter().enumerate() {
            let found = enter.get(*a).copied().unwrap_or(u32::MAX);
            let expected = want.arg0 + 8 * i as u32;
            if found != expected {
                return Err(TracefsError::Layout {
                    tp: format!("syscalls:sys_enter_{sys}"),
                    field: (*a).into(),
                    found,
                    expected,
                });
            }
        }
        if ret != want.ret {
            return Err(TracefsError::Layout {
                tp: format!("syscalls:{exit_tp}"),
                field: "ret".into(),
                found: ret,
                expected: want.ret,
            });
        }
    }
    layout.ok_or_else(|| TracefsError::MissingTracepoint("syscalls".into()))
}

/// Whether `raw_syscalls:sys_enter/sys_exit` put `id` at 8 and `args`/`ret` where the
/// syscall tracepoints put theirs (`layout`), as the compat programs assume.
pub fn raw_syscalls_layout(root: &Path, layout: SyscallLayout) -> Result<(), String> {
    let enter = field_offsets(root, "raw_syscalls", "sys_enter").map_err(|e| e.to_string())?;
    let exit = field_offsets(root, "raw_syscalls", "sys_exit").map_err(|e| e.to_string())?;
    match (enter.get("id"), enter.get("args"), exit.get("id"), exit.get("ret")) {
        (Some(8), Some(&a), Some(8), Some(&r)) if a == layout.arg0 && r == layout.ret => Ok(()),
        other => Err(format!(
            "raw_syscalls fields (id, args, id, ret) at {other:?}; expected id at 8, args at {}, ret at {}",
            layout.arg0, layout.ret
        )),
    }
}

/// Whether `task:task_newtask` has the layout its program reads: `pid` at 8 and an 8-byte
/// `clone_flags` at 32 (5.10 through 6.18).
pub fn newtask_layout(root: &Path) -> Result<(), String> {
    let fields = field_offsets(root, "task", "task_newtask").map_err(|e| e.to_string())?;
    match (fields.get("pid"), fields.get("clone_flags")) {
        (Some(8), Some(32)) => Ok(()),
        (p, f) => Err(format!("task_newtask fields pid at {p:?}, clone_flags at {f:?}; expected 8 and 32")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLONE: &str = "name: sys_enter_clone\nID: 196\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:unsigned long clone_flags;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int * parent_tidptr;\toffset:32;\tsize:8;\tsigned:0;\n\tfield:char comm[16];\toffset:40;\tsize:16;\tsigned:0;\n\nprint fmt: \"...\"\n";

    #[test]
    fn parses_format() {
        let f = parse_format(CLONE);
        assert_eq!(f.get("clone_flags"), Some(&16));
        assert_eq!(f.get("parent_tidptr"), Some(&32));
        assert_eq!(f.get("__syscall_nr"), Some(&8));
        assert_eq!(f.get("comm"), Some(&40));
    }
}
