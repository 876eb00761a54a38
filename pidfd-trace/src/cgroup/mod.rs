//! Where an event's caller lives: cgroup id → cgroup v2 path → container, best effort and
//! cached with bounds. The id is what the kernel programs recorded
//! (bpf_get_current_cgroup_id(): the inode number of the caller's cgroup2 directory).
mod cache;
mod container;
mod mounts;

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use log::debug;

use self::cache::GenCache;
pub use self::{
    container::{Container, parse_container},
    mounts::CgroupMounts,
};

/// Distinct cgroups remembered; a node rarely has more live ones than this.
const CACHE_CGROUPS: usize = 8192;
/// (pid, cgroup) pairs remembered for the v1 fallback of hybrid hosts.
const CACHE_V1_PIDS: usize = 4096;
/// The directory walk (used only when file handles are refused) runs at most this often.
const WALK_INTERVAL: Duration = Duration::from_secs(2);
/// And visits at most this many directories.
const WALK_MAX_DIRS: usize = 200_000;

/// What enrichment adds to an event. Shared with the resolver's caches: cloning it only
/// counts references, so an event costs no allocation for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The cgroup v2 path, as /proc/<pid>/cgroup's `0::` line shows it.
    pub path: Option<Arc<str>>,
    /// The container the path (or /proc/<pid>/cgroup) shows, if any.
    pub container: Option<Container>,
    /// Whether `container` is the one the cgroup2 path shows (else it came from the v1
    /// hierarchies of a hybrid host, or there is none).
    pub on_path: bool,
}

/// A resolved cgroup2 id: its path and the container the path shows, parsed once.
#[derive(Clone, Debug)]
struct Known {
    path: Arc<str>,
    container: Option<Container>,
}

impl Known {
    fn new(path: String) -> Self {
        let container = parse_container(&path);
        Self { path: path.into(), container }
    }
}

/// cgroup id → path and container, with bounded caches; one per pipeline (the enricher).
pub struct Resolver {
    mounts: CgroupMounts,
    /// The cgroup2 mount point, open, for open_by_handle_at.
    mount_dir: Option<File>,
    handles_refused: bool,
    paths: GenCache<u64, Option<Known>>,
    /// The id looked up last and what it gave: a storm comes from few cgroups, and this
    /// spares it the hashing. Always a copy of what `paths` gave for that id.
    last: Option<(u64, Option<Known>)>,
    v1: GenCache<(u32, u64), Option<Container>>,
    /// The same memo for `v1`.
    last_v1: Option<((u32, u64), Option<Container>)>,
    last_walk: Option<Instant>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    /// A resolver for this host's cgroup mounts (/proc/self/mountinfo).
    pub fn new() -> Self {
        Self::with_mounts(CgroupMounts::read())
    }

    /// A resolver for the given mounts (tests).
    pub fn with_mounts(mounts: CgroupMounts) -> Self {
        let mount_dir = mounts.v2.as_ref().and_then(|(p, _)| File::open(p).ok());
        debug!("cgroup2 for cgroup ids: {:?}; v1 hierarchies: {}", mounts.v2, mounts.has_v1);
        Self {
            mounts,
            mount_dir,
            handles_refused: false,
            paths: GenCache::new(CACHE_CGROUPS),
            last: None,
            v1: GenCache::new(CACHE_V1_PIDS),
            last_v1: None,
            last_walk: None,
        }
    }

    /// The cgroup and container of the caller `pid` whose cgroup2 id is `cgroup_id`.
    pub fn lookup(&mut self, cgroup_id: u64, pid: u32) -> CgroupInfo {
        let (path, mut container) = match self.known(cgroup_id, pid) {
            Some(k) => (Some(k.path), k.container),
            None => (None, None),
        };
        let on_path = container.is_some();
        // Hybrid/legacy hosts: runtimes with the cgroupfs driver put containers only in the
        // v1 hierarchies, so the v2 path shows nothing; /proc/<pid>/cgroup still does (racy:
        // the caller may be gone, then we say nothing).
        if container.is_none() && self.mounts.has_v1 {
            let key = (pid, cgroup_id);
            container = match &self.last_v1 {
                Some((k, c)) if *k == key => c.clone(),
                _ => match self.v1.get(&key) {
                    Some(c) => c,
                    None => {
                        let c = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                            .ok()
                            .and_then(|s| container_in_proc_cgroup(&s));
                        self.v1.insert(key, c.clone());
                        c
                    }
                },
            };
            self.last_v1 = Some((key, container.clone()));
        }
        CgroupInfo { path, container, on_path }
    }

    /// The cgroup v2 path of `id` (the cgroup of process `pid` when it ran), or None when
    /// there is no cgroup2 mount or the cgroup is already gone.
    pub fn path_of(&mut self, id: u64, pid: u32) -> Option<Arc<str>> {
        self.known(id, pid).map(|k| k.path)
    }

    /// `path_of` with the container its path shows, from the caches when they have it.
    fn known(&mut self, id: u64, pid: u32) -> Option<Known> {
        if id == 0 || self.mounts.v2.is_none() {
            return None;
        }
        if let Some((last, k)) = &self.last
            && *last == id
        {
            return k.clone();
        }
        // A miss the rate-limited walk did not look for is not remembered (outer None).
        let k = self.resolve(id, pid)?;
        self.last = Some((id, k.clone()));
        k
    }

    /// The cache, else the kernel: file handle, the caller's /proc entry, the walk. Outer
    /// None: not looked for (walk skipped), so not remembered either.
    fn resolve(&mut self, id: u64, pid: u32) -> Option<Option<Known>> {
        if let Some(k) = self.paths.get(&id) {
            return Some(k);
        }
        let found = if self.handles_refused { None } else { self.by_handle(id) };
        // Without CAP_DAC_READ_SEARCH (the agent drops it after attaching): ask the caller's
        // /proc entry, and believe it only if that directory's inode is the recorded id.
        let found = found.or_else(|| self.by_proc(id, pid));
        let found = match found {
            Some(p) => Some(Known::new(p)),
            // Walk skipped (rate limit): don't remember a miss we did not look for.
            None if self.handles_refused => self.walk(id)?,
            None => None,
        };
        self.paths.insert(id, found.clone());
        Some(found)
    }

    /// open_by_handle_at with the kernfs file handle (the cgroup id itself), then the path
    /// of the opened directory: O(1), needs CAP_DAC_READ_SEARCH. Some(path) on success.
    fn by_handle(&mut self, id: u64) -> Option<String> {
        let dir = self.mount_dir.as_ref()?;
        /// `struct file_handle` with room for the 8-byte kernfs id (FILEID_KERNFS, 5.5+).
        #[repr(C)]
        struct KernfsHandle {
            handle_bytes: u32,
            handle_type: i32,
            id: u64,
        }
        const FILEID_KERNFS: i32 = 0xfe;
        let mut h = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
        // SAFETY: the struct has the layout of file_handle followed by 8 handle bytes.
        let fd = unsafe {
            libc::open_by_handle_at(
                dir.as_raw_fd(),
                (&mut h as *mut KernfsHandle).cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // Gone (ESTALE/ENOENT): a real miss.
                Some(libc::ESTALE) | Some(libc::ENOENT) => {}
                _ => {
                    debug!(
                        "open_by_handle_at on the cgroup2 mount refused ({err}); walking the tree instead"
                    );
                    self.handles_refused = true;
                }
            }
            return None;
        }
        // SAFETY: fd is a fresh descriptor we own.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let abs = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        self.relative(&abs)
    }

    /// The caller's `0::` line of /proc/<pid>/cgroup, if the directory it names still has
    /// inode `id` (the caller may have moved, or be gone). Needs no capability.
    fn by_proc(&self, id: u64, pid: u32) -> Option<String> {
        let (mount, root) = self.mounts.v2.as_ref()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
        let rel = path.strip_prefix(root.trim_end_matches('/')).unwrap_or(path).trim_start_matches('/');
        let ino = std::fs::metadata(mount.join(rel)).ok()?.ino();
        (ino == id).then(|| path.to_string())
    }

    /// The cgroup path of a directory under the cgroup2 mount.
    fn relative(&self, abs: &Path) -> Option<String> {
        let (mount, root) = self.mounts.v2.as_ref()?;
        let rel = abs.strip_prefix(mount).ok()?;
        Some(join_cgroup(root, rel))
    }

    /// Fallback without file handles: a bounded, rate-limited walk of the cgroup2 tree that
    /// remembers every directory it passes. Outer None: walk skipped.
    fn walk(&mut self, id: u64) -> Option<Option<Known>> {
        if self.last_walk.is_some_and(|t| t.elapsed() < WALK_INTERVAL) {
            return None;
        }
        self.last_walk = Some(Instant::now());
        let (mount, root) = self.mounts.v2.clone()?;
        let mut stack: Vec<PathBuf> = vec![mount.clone()];
        let (mut visited, mut hit) = (0usize, None);
        while let Some(dir) = stack.pop() {
            visited += 1;
            if visited > WALK_MAX_DIRS {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let path = join_cgroup(&root, dir.strip_prefix(&mount).unwrap_or(Path::new("")));
            let known = Known::new(path);
            if meta.ino() == id {
                hit = Some(known.clone());
            }
            self.paths.insert(meta.ino(), Some(known));
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        Some(hit)
    }
}

fn join_cgroup(root: &str, rel: &Path) -> String {
    let rel = rel.to_string_lossy();
    let rel = rel.trim_matches('/');
    match (root.trim_end_matches('/'), rel) {
        ("", "") => "/".to_string(),
        ("", r) => format!("/{r}"),
        (root, "") => root.to_string(),
        (root, r) => format!("{root}/{r}"),
    }
}

/// The innermost container any hierarchy of /proc/<pid>/cgroup shows
/// (`4:memory:/docker/<id>`, `0::/system.slice/docker-<id>.scope`).
pub fn container_in_proc_cgroup(text: &str) -> Option<Container> {
    text.lines().filter_map(|l| l.splitn(3, ':').nth(2)).find_map(parse_container)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines() {
        let id = "a".repeat(64);
        let text = format!("9:name=systemd:/\n4:memory:/docker/{id}\n0::/\n");
        assert_eq!(container_in_proc_cgroup(&text).map(|c| c.id), Some(id.into()));
        assert_eq!(container_in_proc_cgroup("0::/user.slice\n"), None);
    }

    #[test]
    fn joining() {
        assert_eq!(join_cgroup("/", Path::new("")), "/");
        assert_eq!(join_cgroup("/", Path::new("a/b")), "/a/b");
        assert_eq!(join_cgroup("/ns", Path::new("a")), "/ns/a");
        assert_eq!(join_cgroup("/ns", Path::new("")), "/ns");
    }

    /// The real thing, as root: a fresh cgroup2 directory named like a docker scope must
    /// resolve from its inode number, by file handle and by the walk.
    #[test]
    fn resolves_a_real_cgroup2_directory() {
        let mounts = CgroupMounts::read();
        let Some((mount, _)) = mounts.v2.clone() else {
            eprintln!("skipped: no cgroup2 mount on this host");
            return;
        };
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating a cgroup needs root");
            return;
        }
        let id = format!("{:064x}", 0xfeed_0000_u64 + u64::from(std::process::id()));
        let parent = mount.join(format!("pidfd-trace-unit-{}", std::process::id()));
        let dir = parent.join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&dir).expect("mkdir in cgroup2");
        let ino = std::fs::metadata(&dir).unwrap().ino();
        let want = format!("/pidfd-trace-unit-{}/docker-{id}.scope", std::process::id());

        let mut r = Resolver::with_mounts(mounts.clone());
        let info = r.lookup(ino, std::process::id());
        let mut walker = Resolver::with_mounts(mounts.clone());
        walker.handles_refused = true;
        let walked = walker.path_of(ino, 0);
        // A walk skipped by its rate limit is no answer: once a walk may run, it finds the id.
        let mut later = Resolver::with_mounts(mounts.clone());
        later.handles_refused = true;
        later.last_walk = Some(Instant::now());
        let skipped = later.path_of(ino, 0);
        later.last_walk = None;
        let walked_later = later.path_of(ino, 0);
        // Without file handles or a walk: a process inside the cgroup vouches for it.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string())
            .expect("move a child into the cgroup");
        let mut prober = Resolver::with_mounts(mounts);
        prober.handles_refused = true;
        prober.last_walk = Some(Instant::now());
        let by_proc = prober.path_of(ino, child.id());
        let other = prober.path_of(ino + 1_000_000, child.id());
        let _ = child.kill();
        let _ = child.wait();
        let gone_before = r.path_of(u64::MAX - 1, 0);
        std::fs::remove_dir(&dir).unwrap();
        std::fs::remove_dir(&parent).unwrap();

        assert_eq!(info.path.as_deref(), Some(want.as_str()), "by file handle");
        let c = info.container.expect("container from the path");
        assert_eq!((&*c.id, c.runtime), (id.as_str(), "docker"));
        assert_eq!(walked.as_deref(), Some(want.as_str()), "by walking the tree");
        assert_eq!(
            (skipped, walked_later.as_deref()),
            (None, Some(want.as_str())),
            "a skipped walk is not remembered as a miss"
        );
        assert_eq!(by_proc.as_deref(), Some(want.as_str()), "by the caller's /proc/<pid>/cgroup");
        assert_eq!(other, None, "an id that is not the caller's cgroup is not guessed");
        assert_eq!(gone_before, None);
        assert_eq!(r.path_of(1, 0).as_deref(), Some("/"), "the root cgroup");
    }
}
