//! Adds what the kernel record does not carry, from /proc and cgroupfs, best effort: the
//! process a pidfd refers to, and the caller's cgroup path and container. A value that
//! cannot be found stays null.
use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use crate::{cgroup, classify::Stage, event::Event, inventory::helper::Helper};

/// The inventory helper that counts a caller's pidfds for an agent without capabilities;
/// without one (tests, `check`) the agent reads `/proc` itself.
static COUNTER: OnceLock<Arc<Helper>> = OnceLock::new();

/// How long one count of a caller's pidfds is reused for its next fd_alloc failures, so a
/// process failing in a tight loop costs one /proc walk per interval, not one per failure.
const COUNT_REUSE: Duration = Duration::from_millis(100);

/// Sets the helper that counts callers' pidfds.
pub fn set_counter(h: Arc<Helper>) {
    let _ = COUNTER.set(h);
}

thread_local! {
    /// pid → (when counted, count): see COUNT_REUSE.
    static COUNTS: RefCell<HashMap<u32, (Instant, Option<usize>)>> = RefCell::new(HashMap::new());

    /// One resolver (and so one bounded cache) per pipeline; the pipeline runs on one thread.
    static CGROUPS: RefCell<Option<cgroup::Resolver>> = const { RefCell::new(None) };
}

/// Resolves `target_pid` of pidfd_getfd / pidfd_send_signal from the caller's
/// `/proc/<pid>/fdinfo/<pidfd>` ("Pid:" line, 5.3+). Racy by nature: if the caller already
/// closed the pidfd the field stays null rather than guessed.
pub fn enrich(ev: &mut Event) {
    if let Some(fd) = ev.used_pidfd {
        ev.target_pid = pidfd_target(ev.pid, fd);
    }
    if ev.stage == Some(Stage::FdAlloc) {
        ev.caller_open_pidfds = caller_pidfds(ev.pid);
    }
    let info =
        CGROUPS.with_borrow_mut(|r| r.get_or_insert_with(cgroup::Resolver::new).lookup(ev.cgroup_id, ev.pid));
    ev.cgroup = info.path;
    if let Some(c) = info.container {
        ev.container_id = Some(c.id);
        ev.pod_uid = c.pod_uid;
    }
}

/// How many pidfds `pid` holds now; None if it is gone or unreadable.
fn caller_pidfds(pid: u32) -> Option<usize> {
    COUNTS.with_borrow_mut(|m| {
        if let Some((at, n)) = m.get(&pid)
            && at.elapsed() < COUNT_REUSE
        {
            return *n;
        }
        let n = match COUNTER.get() {
            Some(h) => h.count(pid).ok(),
            None => crate::inventory::count_pidfds(pid).ok(),
        };
        if m.len() >= 4096 {
            m.retain(|_, (at, _)| at.elapsed() < COUNT_REUSE);
        }
        m.insert(pid, (Instant::now(), n));
        n
    })
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
