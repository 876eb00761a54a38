//! Kernel outcome counters → the contract metrics' label sets. Pure: each `OUTCOMES` key is
//! named with the same functions (classify::stage, names::*) that label events, so a metric
//! and the events it counts always agree.
use pidfd_trace_common::{CounterKey, EventKind, clone_flags};

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

/// The series one kernel counter slot adds to. A failed pidfd_getfd or pidfd_send_signal
/// counts as a call and as a failure.
pub fn series(key: &CounterKey, sem: KernelSemantics) -> Vec<Series> {
    let Ok(kind) = EventKind::try_from(key.kind) else { return Vec::new() };
    let row = hooks::event(kind);
    let errno = (key.errno != 0).then(|| names::errno_name(key.errno));
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
            v
        }
        Feeds::Signal => {
            let mut v = vec![(Family::Signals, vec![names::signal_name(u64::from(key.signal))])];
            v.extend(errno.map(|e| (Family::SignalFailures, vec![e])));
            v
        }
        Feeds::Use => {
            vec![(Family::Uses, vec![row.name().to_string(), errno.unwrap_or_else(|| "ok".into())])]
        }
    }
}

/// The series that exist from start-up at 0 (docs/metrics.md: known label values are
/// exported before the first event, so `increase()` sees it): every creation source, the
/// getfd call counter, and `outcome="ok"` of every use.
pub fn initial_series() -> Vec<Series> {
    hooks::events()
        .filter_map(|row| match row.feeds {
            Feeds::Creation => Some((Family::Created, vec![row.name().to_string()])),
            Feeds::Getfd => Some((Family::Getfd, vec![])),
            Feeds::Signal => None,
            Feeds::Use => Some((Family::Uses, vec![row.name().to_string(), "ok".to_string()])),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use pidfd_trace_common::{clone_flags as cf, hints};

    use super::*;

    fn key(kind: EventKind, errno: u32, hints: u8, signal: u8, flag_bits: u64) -> CounterKey {
        CounterKey { kind: kind as u8, hints, signal, xhints: 0, errno, flag_bits: flag_bits as u32 }
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
}
