//! Which cgroup hierarchies are mounted where, from /proc/self/mountinfo: the cgroup2 mount
//! whose directory inode numbers are the ids bpf_get_current_cgroup_id() returns, on a pure
//! v2 host (/sys/fs/cgroup) and on a hybrid one (/sys/fs/cgroup/unified beside v1).
use std::path::PathBuf;

/// The cgroup mounts this agent uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The cgroup2 mount point and the cgroup path it shows as its root ("/" unless the
    /// agent runs in a cgroup namespace or the mount is of a subtree).
    pub v2: Option<(PathBuf, String)>,
    /// Whether any v1 hierarchy is mounted (hybrid or legacy host): a container can then be
    /// visible only in the v1 paths of /proc/<pid>/cgroup.
    pub has_v1: bool,
}

impl CgroupMounts {
    /// The mounts of this process (/proc/self/mountinfo; none if unreadable).
    pub fn read() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    /// Parses mountinfo(5) lines:
    /// `41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw`.
    pub fn parse(mountinfo: &str) -> Self {
        let mut out = Self::default();
        let mut v2: Vec<(PathBuf, String)> = Vec::new();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else { continue };
            let pre: Vec<&str> = pre.split(' ').collect();
            let (Some(root), Some(point)) = (pre.get(3), pre.get(4)) else { continue };
            match post.split(' ').next() {
                Some("cgroup2") => v2.push((PathBuf::from(unescape(point)), unescape(root))),
                Some("cgroup") => out.has_v1 = true,
                _ => {}
            }
        }
        // The canonical place first; otherwise the first one mounted (hybrid: .../unified).
        let canonical = v2.iter().position(|(p, _)| p.as_os_str() == "/sys/fs/cgroup");
        out.v2 = match canonical {
            Some(i) => Some(v2.swap_remove(i)),
            None => v2.into_iter().next(),
        };
        out
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal `\040` etc.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = s.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_host() {
        let m = CgroupMounts::parse(
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
             39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
             40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(m.v2, Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".into())));
        assert!(m.has_v1);
    }

    #[test]
    fn pure_v2_host_prefers_the_canonical_mount() {
        let m = CgroupMounts::parse(
            "30 23 0:26 / /mnt/other\\040cg rw - cgroup2 cgroup2 rw\n\
             29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(m.v2, Some((PathBuf::from("/sys/fs/cgroup"), "/".into())));
        assert!(!m.has_v1);
    }

    #[test]
    fn odd_mounts() {
        let m = CgroupMounts::parse("30 23 0:26 /kubepods/pod1 /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n");
        assert_eq!(m.v2, Some((PathBuf::from("/mnt/my cg"), "/kubepods/pod1".into())));
        assert_eq!(CgroupMounts::parse("garbage\n"), CgroupMounts::default());
    }
}
