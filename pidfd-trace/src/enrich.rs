//! Adds what the kernel record does not carry, from /proc and cgroupfs, best effort: the
//! process a pidfd refers to, and the caller's cgroup path and container. A value that
//! cannot be found stays null.
use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use log::warn;
use pidfd_trace_common::EventKind;

use crate::{cgroup, classify::Stage, event::Event, inventory::helper::Helper, risk};

/// The inventory helper that counts a caller's pidfds for an agent without capabilities;
/// without one (tests) the agent reads `/proc` itself.
static COUNTER: OnceLock<Arc<Helper>> = OnceLock::new();

/// How long one count of a caller's pidfds is reused for its next fd_alloc failures, so a
/// process failing in a tight loop costs one /proc walk per interval, not one per failure.
const COUNT_REUSE: Duration = Duration::from_millis(100);

/// Sets the helper that counts callers' pidfds (`trace` and `serve`, before they drop their
/// capabilities).
pub fn set_counter(h: Arc<Helper>) {
    let _ = COUNTER.set(h);
}

/// The enrichment stage of the pipeline: owns the cgroup resolver and its bounded caches.
pub struct Enricher {
    cgroups: cgroup::Resolver,
    /// pid → (when counted, pidfds held): see COUNT_REUSE.
    counts: HashMap<u32, (Instant, Option<usize>)>,
}

impl Default for Enricher {
    fn default() -> Self {
        Self::new()
    }
}

impl Enricher {
    /// An enricher for this host's cgroup mounts.
    pub fn new() -> Self {
        Self { cgroups: cgroup::Resolver::new(), counts: HashMap::new() }
    }

    /// Fills in `cgroup`, `container_id`, `pod_uid` and `container_runtime`, and the
    /// `target_pid` of a call that used a pidfd the kernel could not resolve: from the
    /// caller's `/proc/<pid>/fdinfo/<pidfd>` ("Pid:" line, 5.3+). Racy by nature: if the caller
    /// already closed the pidfd the field stays null rather than guessed.
    /// A creation that failed at `fd_alloc` (EMFILE/ENFILE) also gets `caller_open_pidfds`.
    pub fn enrich(&mut self, ev: &mut Event) {
        if ev.stage == Some(Stage::FdAlloc) {
            ev.caller_open_pidfds = self.caller_pidfds(ev.pid);
        }
        enrich(&mut self.cgroups, ev);
    }

    /// How many pidfds `pid` holds now; None if it is gone or unreadable.
    fn caller_pidfds(&mut self, pid: u32) -> Option<usize> {
        if let Some((at, n)) = self.counts.get(&pid)
            && at.elapsed() < COUNT_REUSE
        {
            return *n;
        }
        let n = match COUNTER.get() {
            Some(h) => h.count(pid).ok(),
            None => crate::inventory::count_pidfds(pid).ok(),
        };
        if self.counts.len() >= 4096 {
            self.counts.retain(|_, (at, _)| at.elapsed() < COUNT_REUSE);
        }
        self.counts.insert(pid, (Instant::now(), n));
        n
    }
}

fn enrich(cgroups: &mut cgroup::Resolver, ev: &mut Event) {
    // Only when the kernel could not check the fd at syscall entry (a checked fd that is not
    // a pidfd has no target, whatever the fd number means in /proc by now).
    if ev.target_pid.is_none()
        && !ev.target_checked
        && let Some(fd) = ev.used_pidfd
    {
        ev.target_pid = pidfd_target(ev.pid, fd);
    }
    let mut info = cgroups.lookup(ev.cgroup_id, ev.pid);
    // The cgroup (and the caller) may be gone by now: the directory name the kernel had
    // during the call still names the container (no pod UID: that is in an ancestor's name).
    let mut from_leaf = false;
    if info.container.is_none()
        && info.path.is_none()
        && let Some(c) = ev.cgroup_leaf.as_deref().and_then(cgroup::parse_container)
    {
        info.container = Some(c);
        from_leaf = true;
    }
    if let Some(c) = info.container {
        // The runtime is what the cgroup2 path says; a container found only through the v1
        // hierarchies (hybrid hosts) keeps its id and no runtime.
        ev.container_runtime = (from_leaf || info.on_path).then_some(c.runtime);
        ev.container_id = Some(c.id);
        ev.pod_uid = c.pod_uid;
    }
    ev.cgroup = info.path;
    risky_use(cgroups, ev);
}

/// The parts of README "Risky pidfd use" only user space can do: `cross_container` (both
/// cgroups container-shaped, different containers) and the warn line of a risky pidfd_getfd.
fn risky_use(cgroups: &mut cgroup::Resolver, ev: &mut Event) {
    let Some(reasons) = ev.risk.as_mut() else { return };
    if ev.facts.risk & pidfd_trace_common::risk::CGROUP_DIFFERS != 0
        && let Some(mine) = ev.container_id.as_deref()
    {
        let target_pid = ev.target_pid.unwrap_or(0).max(0) as u32;
        let theirs = cgroups.lookup(ev.facts.target_cgroup_id, target_pid).container;
        if theirs.is_some_and(|t| *t.id != *mine) {
            reasons.push(risk::CROSS_CONTAINER);
        }
    }
    if ev.event == EventKind::PidfdGetfd && !reasons.is_empty() {
        let outcome = match ev.errno.as_deref() {
            Some(e) => format!("was refused it ({e})"),
            None => format!("got it as fd {}", ev.ret),
        };
        warn!(
            "risky pidfd_getfd: pid {} ({}) asked for fd {} of pid {} and {outcome}: risk [{}], file_kind {}, file_path {}",
            ev.pid,
            ev.comm,
            ev.target_fd.unwrap_or(-1),
            ev.target_pid.unwrap_or(0),
            reasons.join(","),
            ev.file_kind.unwrap_or("unknown"),
            ev.file_path.as_deref().unwrap_or("unknown"),
        );
    }
}

fn pidfd_target(pid: u32, fd: i32) -> Option<i64> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    parse_fdinfo_pid(&info)
}

/// `Pid:\t1234` (-1 once the process has been reaped, 0 if outside our pid namespace).
pub fn parse_fdinfo_pid(info: &str) -> Option<i64> {
    let v = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse::<i64>().ok()?;
    (v > 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo() {
        assert_eq!(
            parse_fdinfo_pid(
                "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\n"
            ),
            Some(4242)
        );
        assert_eq!(parse_fdinfo_pid("pos:\t0\nPid:\t-1\n"), None);
        assert_eq!(parse_fdinfo_pid("pos:\t0\n"), None);
    }
}
