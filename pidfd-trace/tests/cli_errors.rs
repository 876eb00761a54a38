//! Start-up errors: each is one line on stderr saying what is wrong and what to do, with a
//! non-zero exit, and never a panic.
use std::process::{Command, Output};

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pidfd-trace"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run agent")
}

fn one_line_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "exactly one line: {err}");
    assert!(err.starts_with("pidfd-trace: error: "), "{err}");
    assert!(err.contains(needle), "want {needle:?} in {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

/// `trace`, `check` and `ls` flags; `serve`'s have their table in tests/serve.rs.
#[test]
fn bad_flag_values() {
    let cases: &[(&[&str], &str)] = &[
        (&["trace", "--output", "xml"], "invalid value 'xml'"),
        (&["trace", "--mode", "uprobe"], "invalid value 'uprobe'"),
        (&["trace", "--pid", "abc"], "invalid value 'abc'"),
        (&["check", "--output", "yaml"], "invalid value 'yaml'"),
        (&["trace", "--bogus"], "unexpected argument '--bogus'"),
        (&["frobnicate"], "unrecognized subcommand"),
        (&["trace", "--ring-kib", "3"], "power of two"),
        (&["trace", "--ring-kib", "x"], "not a number"),
        (&["trace", "--comm"], "a value is required"),
        (&["check", "--mode", "fexit"], "invalid value 'fexit'"),
        (&["trace", "--pid", "-5"], "-5 is not a process id: --pid takes a positive pid"),
        (&["trace", "--pid", "0"], "0 is not a process id: --pid takes a positive pid"),
        (&["trace", "--pid", "4294967296"], "4294967296 is not a process id: too large"),
        (&["ls", "--pid", "99999999999999999999"], "99999999999999999999 is not a process id: too large"),
        (&["trace", "-p", "4294967296"], "--pid takes 1 to 2147483647"),
        (&["trace", "-p", "x1"], "`x1` is not a number"),
        (
            &["trace", "--comm", "this-name-is-way-too-long-for-comm"],
            "is 34 bytes but the kernel keeps only the first 15 bytes of a command name",
        ),
        (&["trace", "-c", "sixteen-bytes-xx"], "give `sixteen-bytes-x`"),
        (&["trace", "-c", ""], "the command name is empty"),
        (&["trace", "--timestamps", "tai"], "invalid value 'tai'"),
        (&["trace", "-o", "yaml"], "invalid value 'yaml'"),
        (&["trace", "-z"], "unexpected argument '-z'"),
        (&["ls", "--output", "xml"], "invalid value 'xml'"),
        (&["ls", "--pid", "abc"], "invalid value 'abc'"),
        (&["ls", "--comm"], "a value is required"),
        (&["ls", "--stale", "yes"], "unexpected argument 'yes'"),
    ];
    for (args, needle) in cases {
        one_line_error(&agent(args, &[]), 2, needle);
    }
}

/// Short options (bcc style) are accepted: parsing gets as far as the BTF check.
#[test]
fn short_options_parse() {
    let btf = [("PIDFD_TRACE_BTF", "/nonexistent/vmlinux")];
    for args in [
        &["trace", "-p", "1", "-c", "systemd", "-x", "-o", "json"][..],
        &["trace", "-n", "exactly15bytes!", "--timestamps", "utc"],
        &["check", "-o", "json"],
    ] {
        let out = agent(args, &btf);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("kernel BTF not found"), "{args:?}: {err}");
    }
}

#[test]
fn tracefs_mounted_but_unreadable() {
    // uid 65534 with exactly the capabilities the README names; tracefs mode 0700 (as here).
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata("/sys/kernel/tracing").map(|m| m.mode()).unwrap_or(0o755);
    if mode & 0o005 != 0 {
        eprintln!("skipped: tracefs is readable by everyone here (mode {mode:o})");
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon"])
        .args([env!("CARGO_BIN_EXE_pidfd-trace"), "trace"])
        .output()
        .expect("setpriv (util-linux) runs");
    one_line_error(&out, 1, "tracefs is mounted at /sys/kernel/tracing but uid 65534 cannot read it");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_DAC_READ_SEARCH") && !err.contains("not mounted"), "{err}");
}

#[test]
fn missing_btf() {
    one_line_error(
        &agent(&["trace"], &[("PIDFD_TRACE_BTF", "/nonexistent/vmlinux")]),
        1,
        "kernel BTF not found at /nonexistent/vmlinux",
    );
}

/// A BTF file that exists but is not BTF (truncated, or something mounted over it): `check`
/// says it is unusable (not "present"), names the fix, exits 1; `trace` fails with one line.
#[test]
fn corrupt_btf() {
    let path = std::env::temp_dir().join(format!("pidfd-trace-corrupt-btf-{}", std::process::id()));
    std::fs::write(&path, b"not BTF at all").unwrap();
    let env = [("PIDFD_TRACE_BTF", path.to_str().unwrap())];
    one_line_error(&agent(&["trace"], &env), 1, "malformed BTF");
    let text = agent(&["check"], &env);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("btf") && l.contains("UNUSABLE") && l.contains("malformed BTF")),
        "{stdout}"
    );
    let json = agent(&["check", "-o", "json"], &env);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("check -o json prints JSON");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["btf"]["present"], false, "{doc}");
    assert!(doc["btf"]["reason"].as_str().unwrap_or("").contains("malformed BTF"), "{doc}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn not_privileged() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_pidfd-trace"))
        .arg("trace")
        .output()
        .expect("setpriv (util-linux) runs");
    one_line_error(&out, 1, "missing capabilities CAP_BPF+CAP_PERFMON");
}

#[test]
fn forced_mode_this_kernel_cannot_do() {
    // Only meaningful where kprobes are missing (like the development host); elsewhere the
    // VM matrix covers the forced modes.
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        eprintln!("skipped: this kernel has kprobes");
        return;
    }
    one_line_error(&agent(&["trace", "--mode", "kprobe"], &[]), 1, "--mode kprobe is not possible here");
    one_line_error(&agent(&["trace", "--mode", "fentry"], &[]), 1, "--mode fentry is not possible here");
}

#[test]
fn tracefs_unmountable() {
    // A private mount namespace without tracefs, and no CAP_SYS_ADMIN to mount it.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         exec setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin {} trace",
        env!("CARGO_BIN_EXE_pidfd-trace")
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    one_line_error(&out, 1, "tracefs is not mounted");
}
