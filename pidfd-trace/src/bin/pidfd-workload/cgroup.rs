//! A throwaway pids cgroup (v1 `pids` hierarchy or cgroup2 with the pids controller) with a
//! given pids.max, for the pids-limit scenario.
use std::{fs, path::PathBuf};

pub struct PidsCgroup {
    root: PathBuf,
    dir: PathBuf,
}

/// The mount point of a hierarchy where the pids controller can limit a child cgroup.
fn pids_root() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    for line in mounts.lines() {
        let (pre, post) = line.split_once(" - ").unwrap_or((line, ""));
        let mount_point = pre.split(' ').nth(4).unwrap_or("");
        let mut post = post.split(' ');
        let (fstype, opts) = (post.next().unwrap_or(""), post.nth(1).unwrap_or(""));
        if fstype == "cgroup" && opts.split(',').any(|o| o == "pids") {
            return Ok(PathBuf::from(mount_point));
        }
        if fstype == "cgroup2" {
            let root = PathBuf::from(mount_point);
            let ctrl = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if ctrl.split_whitespace().any(|c| c == "pids") {
                let _ = fs::write(root.join("cgroup.subtree_control"), "+pids");
                return Ok(root);
            }
        }
    }
    Err("no cgroup hierarchy with the pids controller is mounted".into())
}

impl PidsCgroup {
    pub fn create(max: u32) -> Result<Self, String> {
        let root = pids_root()?;
        let dir = root.join(format!("pidfd-trace-test-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Self { root, dir };
        fs::write(cg.dir.join("pids.max"), max.to_string()).map_err(|e| format!("pids.max: {e}"))?;
        Ok(cg)
    }

    pub fn enter(&self) -> Result<(), String> {
        fs::write(self.dir.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("enter cgroup: {e}"))
    }

    pub fn leave(&self) -> Result<(), String> {
        fs::write(self.root.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("leave cgroup: {e}"))
    }

    /// The `max` count of pids.events: how many forks the limit refused.
    pub fn max_events(&self) -> Option<u64> {
        let ev = fs::read_to_string(self.dir.join("pids.events")).ok()?;
        ev.lines().find_map(|l| l.strip_prefix("max ")).and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Two nested pids cgroups `a/b`: `a/pids.max` = `a_max`, `b/pids.max` = max. A caller in
/// `b` is limited by its ancestor (issue 10, input 6).
pub struct NestedPids {
    root: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

impl NestedPids {
    pub fn create(a_max: u32) -> Result<Self, String> {
        let root = pids_root()?;
        let a = root.join(format!("pidfd-trace-test-anc-{}", std::process::id()));
        fs::create_dir(&a).map_err(|e| format!("mkdir {}: {e}", a.display()))?;
        let b = a.join("b");
        let cg = Self { root, a, b };
        // cgroup2 needs the controller enabled for a's children (v1: always).
        if cg.a.join("cgroup.subtree_control").exists() {
            fs::write(cg.a.join("cgroup.subtree_control"), "+pids")
                .map_err(|e| format!("a/subtree_control: {e}"))?;
        }
        fs::create_dir(&cg.b).map_err(|e| format!("mkdir {}: {e}", cg.b.display()))?;
        fs::write(cg.a.join("pids.max"), a_max.to_string()).map_err(|e| format!("a/pids.max: {e}"))?;
        fs::write(cg.b.join("pids.max"), "max").map_err(|e| format!("b/pids.max: {e}"))?;
        Ok(cg)
    }

    pub fn enter(&self) -> Result<(), String> {
        fs::write(self.b.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("enter a/b: {e}"))
    }

    pub fn leave(&self) -> Result<(), String> {
        fs::write(self.root.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("leave a/b: {e}"))
    }

    /// The `max` counts of a's and b's pids.events, added: forks refused by the pids
    /// controller (kernels differ in which cgroup counts a refusal caused by an ancestor:
    /// the requester's, or the one whose limit was hit).
    pub fn max_events(&self) -> Option<u64> {
        let count = |d: &PathBuf| -> Option<u64> {
            let ev = fs::read_to_string(d.join("pids.events")).ok()?;
            ev.lines().find_map(|l| l.strip_prefix("max ")).and_then(|v| v.trim().parse().ok())
        };
        Some(count(&self.a)? + count(&self.b)?)
    }
}

impl Drop for NestedPids {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.b);
        let _ = fs::remove_dir(&self.a);
    }
}
