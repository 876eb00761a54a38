//! Kernel outcome counters → the contract metrics' label sets. Pure: each `OUTCOMES` key is
//! named with the same functions (classify::stage, names::*) that label events, so a metric
//! and the events it counts always agree.
use pidfd_trace_common::{CounterKey, EventKind, GETFD_COPIED_PIDFD, clone_flags, xhints};

use crate::{
    classify::KernelSemantics,
    hooks::{self, Feeds, StageRule},
    names,
};

/// Which contract metric a counted outcome feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `pidfd_trace_pidfds_created_total{source}`
    Created,
    /// `pidfd_trace_pidfd_create_failures_total{source,stage,errno}`
    CreateFailures,
    /// `pidfd_trace_getfd_total` (every call)
    Getfd,
    /// `pidfd_trace_getfd_failures_total{errno}`
    GetfdFailures,
    /// `pidfd_trace_signals_total{signal}` (every call)
    Signals,
    /// `pidfd_trace_signal_failures_total{errno}`
    SignalFailures,
    /// `pidfd_trace_pidfd_uses_total{op,outcome}` (outcome: `ok` or the errno name)
    Uses,
}

/// The label values of one series (in the order the metric declares its labels).
pub type Series = (Family, Vec<String>);

/// `signals_total{signal}` of a pidfd_send_signal refused before it ran (stage `denied`): its
/// arguments were never seen (README: Metrics).
pub const UNKNOWN_SIGNAL: &str = "unknown";

/// The series one kernel counter slot adds to. A failed pidfd_getfd or pidfd_send_signal
/// counts as a call and as a failure.
pub fn series(key: &CounterKey, sem: KernelSemantics) -> Vec<Series> {
    let Ok(kind) = EventKind::try_from(key.kind) else { return Vec::new() };
    let row = hooks::event(kind);
    let errno = (key.errno != 0).then(|| names::errno_name(key.errno).into_owned());
    match row.feeds {
        Feeds::Creation => {
            let source = row.name().to_string();
            let Some(errno) = errno else { return vec![(Family::Created, vec![source])] };
            // Counter keys keep only the flag bits that matter for the stage; every counted
            // clone had CLONE_PIDFD (the programs count nothing else).
            let flags = match row.stage {
                StageRule::Clone => u64::from(key.flag_bits) | clone_flags::CLONE_PIDFD,
                _ => u64::from(key.flag_bits),
            };
            let stage = crate::classify::stage(kind, key.errno, key.hints, key.xhints, flags, sem)
                .map_or("other", |s| s.as_str())
                .to_string();
            vec![(Family::CreateFailures, vec![source, stage, errno])]
        }
        Feeds::Getfd => {
            let mut v = vec![(Family::Getfd, vec![])];
            v.extend(errno.map(|e| (Family::GetfdFailures, vec![e])));
            // A copy of a pidfd is a new pidfd too (README "Every way a pidfd is born").
            if key.errno == 0 && key.flag_bits & GETFD_COPIED_PIDFD != 0 {
                v.push((Family::Created, vec![row.name().to_string()]));
            }
            v
        }
        Feeds::Signal => {
            // A call refused before it ran (seccomp) never showed its signal: not signal 0.
            let signal = if key.xhints & xhints::DENIED != 0 {
                UNKNOWN_SIGNAL.to_string()
            } else {
                names::signal_name(u64::from(key.signal)).into_owned()
            };
            let mut v = vec![(Family::Signals, vec![signal])];
            v.extend(errno.map(|e| (Family::SignalFailures, vec![e])));
            v
        }
        Feeds::Use => {
            vec![(Family::Uses, vec![row.name().to_string(), errno.unwrap_or_else(|| "ok".into())])]
        }
    }
}

/// pidfd_send_signal(2)'s documented errnos: `signal_failures_total{errno}` starts with
/// these at 0. Others the kernel may return get a series at their first occurrence.
pub const SIGNAL_ERRNOS: [u32; 4] =
    [1 /* EPERM */, 3 /* ESRCH */, 9 /* EBADF */, 22 /* EINVAL */];

/// pidfd_getfd(2)'s documented errnos, for `getfd_failures_total{errno}` likewise.
pub const GETFD_ERRNOS: [u32; 6] = [
    1,  /* EPERM */
    3,  /* ESRCH */
    9,  /* EBADF */
    22, /* EINVAL */
    23, /* ENFILE */
    24, /* EMFILE */
];

/// The series that exist from start-up at 0 (README, "Series from zero": known label values
/// are exported before the first event, so `increase()` sees it), row by row of the hook
/// table:
/// - creations: every source; every (source, stage, errno) the classifier gives for the
///   errnos it names ([`crate::classify::NAMED_ERRNOS`]), found by running [`series`] (the
///   function that labels the live counters) over every combination of those errnos, the
///   stage hints and the flags the stage rules look at. Other errnos (stage `other`, or
///   `fd_alloc` from a failed creation step under function probes) appear at their first
///   occurrence;
/// - getfd: the call counter and the errnos pidfd_getfd(2) documents;
/// - signals: every signal with a name (`0`, SIGHUP … SIGSYS; real-time signals at their
///   first use) and the errnos pidfd_send_signal(2) documents;
/// - uses: `outcome="ok"` of every op (errno outcomes at their first occurrence).
pub fn initial_series(sem: KernelSemantics) -> Vec<Series> {
    use pidfd_trace_common::hints as h;
    let mut out: Vec<Series> = Vec::new();
    let mut add = |key: CounterKey| {
        for s in series(&key, sem) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    };
    let key = |kind: EventKind, errno: u32, hints: u8, signal: u8, flag_bits: u64| CounterKey {
        kind: kind as u8,
        hints,
        signal,
        xhints: 0,
        errno,
        flag_bits: flag_bits as u32,
    };
    let hint_sets: Vec<u8> = {
        let fn_hints = [0, h::PIDFD_CREATED, h::PIDFD_CREATE_FAILED, h::CGROUP_FORK_FAILED];
        let mut v = vec![0, h::PIDS_AT_LIMIT];
        if sem.creation_observed {
            v.extend(fn_hints.iter().map(|x| h::COPY_PROCESS | x));
            v.push(h::COPY_PROCESS | h::PIDFD_CREATED | h::CGROUP_FORK_FAILED);
        }
        v
    };
    let clone_flag_sets =
        [0, clone_flags::CLONE_DETACHED, clone_flags::CLONE_THREAD, clone_flags::CLONE_PARENT_SETTID];
    // Paths no syscall tracepoint sees get no series: a 0 would claim none happened.
    for row in hooks::events().filter(|r| !r.tracepoint.syscalls.is_empty()) {
        let kind = row.kind;
        add(key(kind, 0, 0, 0, 0));
        match row.feeds {
            // Exit-only rows (reopen) see successes only: no failure series.
            Feeds::Creation if !row.tracepoint.enter => {}
            Feeds::Creation => {
                for errno in crate::classify::NAMED_ERRNOS {
                    match row.stage {
                        StageRule::Clone => {
                            for &hints in &hint_sets {
                                for flags in clone_flag_sets {
                                    add(key(kind, errno, hints, 0, flags));
                                }
                            }
                        }
                        _ => {
                            for flags in [0, 1] {
                                add(key(kind, errno, 0, 0, flags));
                            }
                        }
                    }
                }
            }
            Feeds::Getfd => {
                add(key(kind, 0, 0, 0, u64::from(GETFD_COPIED_PIDFD)));
                for errno in GETFD_ERRNOS {
                    add(key(kind, errno, 0, 0, 0));
                }
            }
            Feeds::Signal => {
                for signal in 0..32 {
                    add(key(kind, 0, 0, signal, 0));
                }
                for errno in SIGNAL_ERRNOS {
                    add(key(kind, errno, 0, 15, 0));
                }
            }
            Feeds::Use => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use pidfd_trace_common::{clone_flags as cf, hints};

    use super::*;

    fn key(kind: EventKind, errno: u32, hints: u8, signal: u8, flag_bits: u64) -> CounterKey {
        CounterKey { kind: kind as u8, hints, signal, xhints: 0, errno, flag_bits: flag_bits as u32 }
    }

    #[test]
    fn a_denied_send_signal_is_no_signal_0() {
        let sem = KernelSemantics::default();
        let mut k = key(EventKind::PidfdSendSignal, 1, 0, 0, 0);
        k.xhints = xhints::DENIED;
        let got = series(&k, sem);
        assert_eq!(got[0], (Family::Signals, vec![UNKNOWN_SIGNAL.to_string()]));
        assert_eq!(got[1], (Family::SignalFailures, vec!["EPERM".to_string()]));
        // A real signal 0 (a liveness probe) stays "0".
        let got = series(&key(EventKind::PidfdSendSignal, 0, 0, 0, 0), sem);
        assert_eq!(got, vec![(Family::Signals, vec!["0".to_string()])]);
    }

    #[test]
    fn table() {
        use EventKind::*;
        use Family::*;
        let sem = KernelSemantics { thread_pidfd: true, ..Default::default() };
        let s = |f: Family, l: &[&str]| (f, l.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        let cases: Vec<(CounterKey, Vec<Series>)> = vec![
            (key(Clone, 0, 0, 0, 0), vec![s(Created, &["clone"])]),
            (key(Clone3, 0, 0, 0, 0), vec![s(Created, &["clone3"])]),
            (key(PidfdOpen, 0, 0, 0, 0), vec![s(Created, &["pidfd_open"])]),
            (
                key(Clone, 22, 0, 0, cf::CLONE_PARENT_SETTID),
                vec![s(CreateFailures, &["clone", "flags", "EINVAL"])],
            ),
            (key(Clone, 24, 0, 0, 0), vec![s(CreateFailures, &["clone", "fd_alloc", "EMFILE"])]),
            (key(Clone3, 14, 0, 0, 0), vec![s(CreateFailures, &["clone3", "user_memory", "EFAULT"])]),
            (
                key(Clone, 11, hints::PIDS_AT_LIMIT, 0, 0),
                vec![s(CreateFailures, &["clone", "pids_cgroup", "EAGAIN"])],
            ),
            (key(Clone, 11, 0, 0, 0), vec![s(CreateFailures, &["clone", "task_limit", "EAGAIN"])]),
            (key(PidfdOpen, 3, 0, 0, 0), vec![s(CreateFailures, &["pidfd_open", "other", "ESRCH"])]),
            (key(PidfdOpen, 22, 0, 0, 4), vec![s(CreateFailures, &["pidfd_open", "flags", "EINVAL"])]),
            (key(PidfdGetfd, 0, 0, 0, 0), vec![s(Getfd, &[])]),
            (key(PidfdGetfd, 9, 0, 0, 0), vec![s(Getfd, &[]), s(GetfdFailures, &["EBADF"])]),
            (key(PidfdSendSignal, 0, 0, 15, 0), vec![s(Signals, &["SIGTERM"])]),
            (key(PidfdSendSignal, 9, 0, 9, 0), vec![s(Signals, &["SIGKILL"]), s(SignalFailures, &["EBADF"])]),
            (key(PidfdSendSignal, 0, 0, 255, 0), vec![s(Signals, &["255"])]),
        ];
        for (k, want) in cases {
            assert_eq!(series(&k, sem), want, "{k:?}");
        }
        let mut unknown = key(Clone, 0, 0, 0, 0);
        unknown.kind = 99;
        assert!(series(&unknown, sem).is_empty());
    }

    #[test]
    fn known_series_cover_the_classifier() {
        use Family::*;
        let s = |f: Family, l: &[&str]| (f, l.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        for sem in [
            KernelSemantics { thread_pidfd: false, creation_observed: false },
            KernelSemantics { thread_pidfd: true, creation_observed: true },
        ] {
            let known = initial_series(sem);
            for want in [
                s(Created, &["clone"]),
                s(Created, &["clone3"]),
                s(Created, &["pidfd_open"]),
                s(CreateFailures, &["clone", "flags", "EINVAL"]),
                s(CreateFailures, &["clone3", "fd_alloc", "EMFILE"]),
                s(CreateFailures, &["clone3", "fd_alloc", "ENFILE"]),
                s(CreateFailures, &["clone", "user_memory", "EFAULT"]),
                s(CreateFailures, &["clone", "pids_cgroup", "EAGAIN"]),
                s(CreateFailures, &["clone3", "task_limit", "EAGAIN"]),
                s(CreateFailures, &["pidfd_open", "flags", "EINVAL"]),
                s(CreateFailures, &["pidfd_open", "fd_alloc", "EMFILE"]),
                s(Getfd, &[]),
                s(GetfdFailures, &["EBADF"]),
                s(Signals, &["SIGTERM"]),
                s(Signals, &["SIGKILL"]),
                s(Signals, &["0"]),
                s(SignalFailures, &["ESRCH"]),
            ] {
                assert!(known.contains(&want), "{want:?} missing for {sem:?}");
            }
            // Every known series is one the live path can produce (same function), and the
            // set stays small.
            assert!(known.len() < 120, "{}", known.len());
            // Events of an unnamed errno are not guessed in advance.
            assert!(!known.iter().any(|(_, l)| l.iter().any(|v| v == "ENOMEM")));
        }
        // user_memory needs PIDFD_CREATED under function probes: still known.
        let fnp = initial_series(KernelSemantics { thread_pidfd: true, creation_observed: true });
        assert!(fnp.contains(&s(CreateFailures, &["clone3", "user_memory", "EFAULT"])));
    }

    #[test]
    fn unknown_kind_is_ignored() {
        let sem = KernelSemantics::default();
        let mut unknown = key(EventKind::Clone, 0, 0, 0, 0);
        unknown.kind = 99;
        assert!(series(&unknown, sem).is_empty());
    }
}
