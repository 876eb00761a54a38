//! Human names for the numbers the kernel hands us: errnos, signals and flag bits.
use pidfd_trace_common::EventKind;

/// Linux errno names (asm-generic/errno-base.h and errno.h, x86_64).
const ERRNOS: &[(u32, &str)] = &[
    (1, "EPERM"),
    (2, "ENOENT"),
    (3, "ESRCH"),
    (4, "EINTR"),
    (5, "EIO"),
    (6, "ENXIO"),
    (7, "E2BIG"),
    (8, "ENOEXEC"),
    (9, "EBADF"),
    (10, "ECHILD"),
    (11, "EAGAIN"),
    (12, "ENOMEM"),
    (13, "EACCES"),
    (14, "EFAULT"),
    (15, "ENOTBLK"),
    (16, "EBUSY"),
    (17, "EEXIST"),
    (18, "EXDEV"),
    (19, "ENODEV"),
    (20, "ENOTDIR"),
    (21, "EISDIR"),
    (22, "EINVAL"),
    (23, "ENFILE"),
    (24, "EMFILE"),
    (25, "ENOTTY"),
    (26, "ETXTBSY"),
    (27, "EFBIG"),
    (28, "ENOSPC"),
    (29, "ESPIPE"),
    (30, "EROFS"),
    (31, "EMLINK"),
    (32, "EPIPE"),
    (33, "EDOM"),
    (34, "ERANGE"),
    (35, "EDEADLK"),
    (36, "ENAMETOOLONG"),
    (37, "ENOLCK"),
    (38, "ENOSYS"),
    (39, "ENOTEMPTY"),
    (40, "ELOOP"),
    (75, "EOVERFLOW"),
    (95, "EOPNOTSUPP"),
    (110, "ETIMEDOUT"),
    (125, "ECANCELED"),
    (512, "ERESTARTSYS"),
    (513, "ERESTARTNOINTR"),
    (514, "ERESTARTNOHAND"),
    (516, "ERESTART_RESTARTBLOCK"),
    (524, "ENOTSUPP"),
];

/// The errno name, or `E<n>` for numbers this table does not know.
pub fn errno_name(errno: u32) -> String {
    match ERRNOS.iter().find(|(n, _)| *n == errno) {
        Some((_, name)) => (*name).to_string(),
        None => format!("E{errno}"),
    }
}

const SIGNALS: [&str; 32] = [
    "0",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// `SIGTERM`, `SIGRTMIN+3`, or the number for anything out of range. Signal 0 (a liveness
/// probe) is named `0`, as kill(1) does.
pub fn signal_name(sig: u64) -> String {
    match sig {
        0..=31 => SIGNALS[sig as usize].to_string(),
        32..=64 => format!("SIGRTMIN+{}", sig - 32),
        _ => sig.to_string(),
    }
}

/// Names of the set bits of `flags` as the syscall of `kind` defines them. clone's low byte is
/// the exit signal, not a flag, and is left out; unknown bits come out as hex.
pub fn flag_names(kind: EventKind, flags: u64) -> Vec<String> {
    let table = crate::hooks::event(kind).flags;
    let mut rest = flags & !table.not_flags;
    let mut names = Vec::new();
    for (bit, name) in table.names {
        if rest & bit != 0 {
            names.push((*name).to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    names
}

/// The JSON `event` value of `kind` (docs/events.md).
pub fn event_name(kind: EventKind) -> &'static str {
    kind.name()
}

/// A name a traced process chose (`comm`, a file name) made safe for a terminal column, as
/// `ps` does: every control character (newline, ESC, DEL, C1) becomes `?`, so a hostile name
/// can neither split one record into two lines nor send escape sequences to the reader's
/// terminal. JSON and the metrics exposition escape these themselves; only text views need this.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>().into()
    } else {
        s.into()
    }
}

/// A path for a space-separated `key=value` detail: as is when it is plain, else quoted with
/// Rust string escapes (`"/tmp/a b\n"`), so spaces, quotes and control characters stay
/// visible and unambiguous.
pub fn detail_path(s: &str) -> String {
    if s.chars().any(|c| c.is_control() || c.is_whitespace() || c == '"' || c == '\\') {
        format!("{s:?}")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use pidfd_trace_common::clone_flags as cf;

    use super::*;

    #[test]
    fn errnos() {
        for (n, name) in
            [(22, "EINVAL"), (14, "EFAULT"), (24, "EMFILE"), (11, "EAGAIN"), (3, "ESRCH"), (9999, "E9999")]
        {
            assert_eq!(errno_name(n), name);
        }
    }

    #[test]
    fn signals() {
        for (n, name) in
            [(0, "0"), (9, "SIGKILL"), (15, "SIGTERM"), (31, "SIGSYS"), (34, "SIGRTMIN+2"), (200, "200")]
        {
            assert_eq!(signal_name(n), name);
        }
    }

    #[test]
    fn flags() {
        let cases: &[(EventKind, u64, &[&str])] = &[
            (EventKind::Clone, cf::CLONE_PIDFD | 17, &["CLONE_PIDFD"]),
            (EventKind::Clone3, cf::CLONE_PIDFD | cf::CLONE_THREAD, &["CLONE_PIDFD", "CLONE_THREAD"]),
            (
                EventKind::Clone,
                cf::CLONE_PIDFD | cf::CLONE_PARENT_SETTID,
                &["CLONE_PIDFD", "CLONE_PARENT_SETTID"],
            ),
            (EventKind::Clone3, cf::CLONE_PIDFD | 1 << 40, &["CLONE_PIDFD", "0x10000000000"]),
            (EventKind::PidfdOpen, 0o4000, &["PIDFD_NONBLOCK"]),
            (EventKind::PidfdOpen, 0, &[]),
            (EventKind::PidfdSendSignal, 2, &["PIDFD_SIGNAL_THREAD_GROUP"]),
            (EventKind::PidfdGetfd, 8, &["0x8"]),
        ];
        for (kind, flags, want) in cases {
            assert_eq!(flag_names(*kind, *flags), *want, "{kind:?} {flags:#x}");
        }
    }
}
