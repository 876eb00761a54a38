//! Risky pidfd use (README "Risky pidfd use"): names what the kernel programs saw of a
//! pidfd_getfd / pidfd_send_signal target (`TargetFacts`, pidfd-trace-ebpf/src/risk.rs). Every
//! reason is decided in the kernel at the call; this only names them. Pure.
use pidfd_trace_common::{PATH_PARTS, PathParts, TargetFacts, exit_facts, risk};

/// The `risk` reasons, in the order events list them and metrics export them.
pub const REASONS: [&str; 3] = [TARGET_EXITING, CRED_MISMATCH, CROSS_CONTAINER];
/// The target was exiting (README "Risky pidfd use").
pub const TARGET_EXITING: &str = "target_exiting";
/// The target's uids differ from the caller's real uid.
pub const CRED_MISMATCH: &str = "cred_mismatch";
/// Caller and target are in two different containers.
pub const CROSS_CONTAINER: &str = "cross_container";

/// include/uapi/linux/magic.h
const ANON_INODE_FS_MAGIC: u32 = 0x0904_1934;
/// include/uapi/linux/magic.h: the pidfs superblock magic (6.9+).
pub const PIDFS_MAGIC: u32 = 0x5049_4446;
const DMA_BUF_MAGIC: u32 = 0x444d_4142;
const TMPFS_MAGIC: u32 = 0x0102_1994;
const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;
/// include/uapi/linux/stat.h
const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;
const S_IFREG: u16 = 0o100_000;
const S_IFDIR: u16 = 0o040_000;
const S_IFIFO: u16 = 0o010_000;
const S_IFCHR: u16 = 0o020_000;
const S_IFBLK: u16 = 0o060_000;

/// Whether the kernel resolved the pidfd to its target (else `risk` is null: unknown).
pub fn target_seen(f: &TargetFacts) -> bool {
    f.risk & risk::TARGET_SEEN != 0
}

/// The reasons the kernel decided, in `REASONS` order.
pub fn kernel_reasons(f: &TargetFacts) -> Vec<&'static str> {
    let mut v = Vec::new();
    if f.risk & risk::TARGET_EXITING != 0 {
        v.push(TARGET_EXITING);
    }
    if f.risk & risk::CRED_MISMATCH != 0 {
        v.push(CRED_MISMATCH);
    }
    if f.risk & risk::CROSS_CONTAINER != 0 {
        v.push(CROSS_CONTAINER);
    }
    v
}

/// The raw exit facts, named (`target_exit` in docs/events.md).
pub fn exit_names(f: &TargetFacts) -> Vec<&'static str> {
    [
        (exit_facts::GROUP_EXIT, "group_exit"),
        (exit_facts::EXIT_STOP, "exit_stop"),
        (exit_facts::PF_EXITING, "pf_exiting"),
        (exit_facts::NO_MM, "no_mm"),
        (exit_facts::ZOMBIE, "zombie"),
    ]
    .into_iter()
    .filter(|(b, _)| f.exit & b != 0)
    .map(|(_, n)| n)
    .collect()
}

/// The dentry name the kernel read (`memfd:x`, `[pidfd]`, a file's last component).
pub fn file_name(f: &TargetFacts) -> &[u8] {
    let n = f.file_name.iter().position(|&b| b == 0).unwrap_or(f.file_name.len());
    &f.file_name[..n]
}

/// Whether the kernel saw the taken file (the file facts are valid).
pub fn file_seen(f: &TargetFacts) -> bool {
    f.risk & risk::FILE_SEEN != 0
}

/// `file_dev` of a taken file: `major:minor` of its superblock (kernel encoding: major << 20).
pub fn file_dev(f: &TargetFacts) -> Option<String> {
    file_seen(f).then(|| format!("{}:{}", f.file_dev >> 20, f.file_dev & 0xf_ffff))
}

/// `file_deleted` of a taken regular file: no links left.
pub fn file_deleted(f: &TargetFacts) -> Option<bool> {
    (file_kind(f) == Some("regular")).then_some(f.risk & risk::FILE_DELETED != 0)
}

/// The kernel-encoded devices (major << 20 | minor) of the internal mounts memfds live on
/// (shmem's, and hugetlbfs's for the default huge page size): found once by creating a memfd
/// of each kind and reading its `st_dev`. A tmpfs file merely named `memfd:…` is elsewhere.
fn memfd_devs() -> &'static [u32] {
    static DEVS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    DEVS.get_or_init(|| {
        [libc::MFD_CLOEXEC, libc::MFD_CLOEXEC | libc::MFD_HUGETLB]
            .into_iter()
            .filter_map(|flags| {
                // SAFETY: plain syscalls on a NUL-terminated name and our own fd.
                unsafe {
                    let fd = libc::memfd_create(c"pidfd-trace-memfd-probe".as_ptr(), flags);
                    if fd < 0 {
                        return None;
                    }
                    let mut st: libc::stat = std::mem::zeroed();
                    let ok = libc::fstat(fd, &mut st) == 0;
                    libc::close(fd);
                    ok.then(|| (libc::major(st.st_dev) << 20) | libc::minor(st.st_dev))
                }
            })
            .collect()
    })
}

/// `file_kind` of a taken file: regular, socket, memfd, dma_buf, pidfd, anon_inode, pipe,
/// directory, char_device, block_device or other; None when the kernel did not see the file.
pub fn file_kind(f: &TargetFacts) -> Option<&'static str> {
    kind(f, memfd_devs())
}

/// `file_kind`, given the devices memfds live on.
fn kind(f: &TargetFacts, memfd_devs: &[u32]) -> Option<&'static str> {
    if !file_seen(f) {
        return None;
    }
    let name = file_name(f);
    let fmt = f.file_mode & S_IFMT;
    Some(match f.file_magic {
        DMA_BUF_MAGIC => "dma_buf",
        PIDFS_MAGIC => "pidfd",
        ANON_INODE_FS_MAGIC if name == b"[pidfd]" => "pidfd",
        ANON_INODE_FS_MAGIC => "anon_inode",
        TMPFS_MAGIC | HUGETLBFS_MAGIC if name.starts_with(b"memfd:") && memfd_devs.contains(&f.file_dev) => {
            "memfd"
        }
        _ => match fmt {
            S_IFSOCK => "socket",
            S_IFREG => "regular",
            S_IFDIR => "directory",
            S_IFIFO => "pipe",
            S_IFCHR => "char_device",
            S_IFBLK => "block_device",
            _ => "other",
        },
    })
}

/// `file_path` of a taken regular file, from the dentry names the kernel program read at
/// syscall exit (`PathParts`): `/a/b/c` from the root of the caller's mount tree. A name cut at
/// `PATH_PART_BYTES - 1` bytes ends in `…`; a walk that stopped short (deeper than
/// `PATH_PARTS` or a failed read) starts with `…/`. None for other kinds or an empty walk.
pub fn file_path(f: &TargetFacts, parts: &PathParts) -> Option<String> {
    if file_kind(f) != Some("regular") || parts.depth == 0 {
        return None;
    }
    let depth = (parts.depth as usize).min(PATH_PARTS);
    let mut out = String::new();
    if parts.more != 0 {
        out.push('…');
    }
    for i in (0..depth).rev() {
        let raw = &parts.names[i];
        let n = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let cut = parts.cut & (1 << i) != 0;
        let mut name = &raw[..n];
        if cut {
            // The kernel cut at a byte count: drop a multi-byte UTF-8 character it split, so
            // the name ends in `…`, not in U+FFFD.
            name = trim_split_char(name);
        }
        out.push('/');
        out.push_str(&String::from_utf8_lossy(name));
        if cut {
            out.push('…');
        }
    }
    Some(out)
}

/// `name` without a trailing UTF-8 sequence that was cut short (at most 3 bytes go).
fn trim_split_char(name: &[u8]) -> &[u8] {
    // The start of the last character: up to 3 continuation bytes (10xxxxxx) back.
    let Some(start) = (1..=4.min(name.len())).map(|k| name.len() - k).find(|&i| name[i] & 0xc0 != 0x80)
    else {
        return name;
    };
    let want = match name[start] {
        b if b < 0x80 => 1,
        b if b >= 0xf0 => 4,
        b if b >= 0xe0 => 3,
        b if b >= 0xc0 => 2,
        _ => 1,
    };
    if name.len() - start < want { &name[..start] } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_name_never_ends_in_half_a_character() {
        let mut parts = PathParts::default();
        // 15 × "é" (2 bytes each) then the first byte of a 16th: 31 bytes, as the kernel cuts.
        let mut name = "é".repeat(15).into_bytes();
        name.push(0xc3);
        parts.names[0][..name.len()].copy_from_slice(&name);
        parts.depth = 1;
        parts.cut = 1;
        let f = facts(S_IFREG | 0o600, 0xef53, "x");
        assert_eq!(file_path(&f, &parts).unwrap(), format!("/{}…", "é".repeat(15)));
        assert_eq!(trim_split_char("aé".as_bytes()), "aé".as_bytes());
        assert_eq!(trim_split_char(&[b'a', 0xe2, 0x82]), b"a");
        assert_eq!(trim_split_char(b"plain"), b"plain");
    }

    /// The device the tests' memfds are on.
    const SHM: u32 = 17;

    fn facts(mode: u16, magic: u32, name: &str) -> TargetFacts {
        let mut f = TargetFacts {
            file_mode: mode,
            file_magic: magic,
            file_dev: SHM,
            risk: risk::FILE_SEEN,
            ..TargetFacts::ZERO
        };
        f.file_name[..name.len()].copy_from_slice(name.as_bytes());
        f
    }

    #[test]
    fn kinds() {
        let cases = [
            (facts(S_IFREG | 0o600, 0xef53, "shadow"), Some("regular")),
            (facts(S_IFREG | 0o777, TMPFS_MAGIC, "memfd:gpu"), Some("memfd")),
            (facts(S_IFREG | 0o777, TMPFS_MAGIC, "notes.txt"), Some("regular")),
            (facts(S_IFREG | 0o777, HUGETLBFS_MAGIC, "memfd:huge"), Some("memfd")),
            (facts(S_IFSOCK | 0o777, 0x534f_434b, "TCP"), Some("socket")),
            (facts(0o600, DMA_BUF_MAGIC, "dmabuf"), Some("dma_buf")),
            (facts(S_IFREG | 0o600, PIDFS_MAGIC, "pidfd"), Some("pidfd")),
            (facts(0o600, ANON_INODE_FS_MAGIC, "[pidfd]"), Some("pidfd")),
            (facts(0o600, ANON_INODE_FS_MAGIC, "[eventfd]"), Some("anon_inode")),
            (facts(S_IFIFO | 0o600, 0x5049_5045, "pipe:"), Some("pipe")),
            (facts(S_IFCHR | 0o666, 0x1373, "null"), Some("char_device")),
            (facts(S_IFDIR | 0o755, 0xef53, "etc"), Some("directory")),
        ];
        for (f, want) in cases {
            assert_eq!(kind(&f, &[SHM]), want, "{:?}", String::from_utf8_lossy(file_name(&f)));
        }
        assert_eq!(kind(&TargetFacts::ZERO, &[SHM]), None);
        // A tmpfs file named memfd:… on another tmpfs (/dev/shm) is a regular file.
        let forged = TargetFacts { file_dev: SHM + 1, ..facts(S_IFREG | 0o600, TMPFS_MAGIC, "memfd:secret") };
        assert_eq!(kind(&forged, &[SHM]), Some("regular"));
        assert_eq!(file_dev(&TargetFacts { file_dev: (8 << 20) | 3, ..forged }).as_deref(), Some("8:3"));
    }

    #[test]
    fn reasons_and_exit_names() {
        let f = TargetFacts {
            risk: risk::TARGET_SEEN | risk::TARGET_EXITING | risk::CRED_MISMATCH | risk::CGROUP_DIFFERS,
            exit: exit_facts::GROUP_EXIT | exit_facts::SOLE_THREAD,
            ..TargetFacts::ZERO
        };
        assert!(target_seen(&f));
        assert_eq!(kernel_reasons(&f), [TARGET_EXITING, CRED_MISMATCH]);
        assert_eq!(exit_names(&f), ["group_exit"]);
        assert!(kernel_reasons(&TargetFacts { risk: risk::TARGET_SEEN, ..TargetFacts::ZERO }).is_empty());
    }

    #[test]
    fn paths() {
        let mut parts = PathParts::default();
        for (i, n) in ["shadow", "etc"].iter().enumerate() {
            parts.names[i][..n.len()].copy_from_slice(n.as_bytes());
        }
        parts.depth = 2;
        let reg = facts(S_IFREG | 0o600, 0xef53, "shadow");
        assert_eq!(file_path(&reg, &parts).as_deref(), Some("/etc/shadow"));
        parts.cut = 1;
        parts.more = 1;
        assert_eq!(file_path(&reg, &parts).as_deref(), Some("…/etc/shadow…"));
        assert_eq!(file_path(&facts(S_IFSOCK, 0x534f_434b, "TCP"), &parts), None);
        assert_eq!(file_path(&reg, &PathParts::default()), None);
    }
}
