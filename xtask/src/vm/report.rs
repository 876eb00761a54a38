//! Reading a guest's console: markers, the suite's JSON lines, `check` output; the matrix.

use super::initramfs::{
    M_CHECK_BEGIN, M_CHECK_END, M_DONE, M_INIT, M_MOUNTS, M_STDERR_BEGIN, M_STDERR_END, M_SUITE_BEGIN,
    M_SUITE_END,
};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub result: String,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct ModeRun {
    pub mode: String,
    pub rc: Option<i32>,
    pub end_seen: bool,
    pub results: Vec<Scenario>,
    /// Non-JSON stdout lines and JSON lines that are not scenario results.
    pub other: Vec<String>,
    pub stderr: Vec<String>,
    pub started: f64,
    pub ended: Option<f64>,
}

#[derive(Debug, Default)]
pub struct CheckRun {
    pub rc: Option<i32>,
    pub end_seen: bool,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Guest {
    pub uname: Option<String>,
    pub init_at: Option<f64>,
    pub mounts: Vec<(String, String)>,
    pub modes: Vec<ModeRun>,
    pub check: Option<CheckRun>,
    pub done_at: Option<f64>,
    pub panic: Option<String>,
    pub oops: Vec<String>,
}

fn marker(line: &str) -> Option<&str> {
    line.find("=====PIDFD-").map(|p| &line[p..])
}

/// `key=value` words of a marker line.
fn marker_fields(m: &str) -> Vec<(String, String)> {
    m.trim_matches('=')
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn field(fields: &[(String, String)], k: &str) -> Option<String> {
    fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
}

enum State {
    Outside,
    Suite(usize),
    Check,
    Stderr(Target),
}

#[derive(Clone, Copy)]
enum Target {
    Suite(usize),
    Check,
    Nowhere,
}

pub fn parse(lines: &[(f64, String)]) -> Guest {
    let mut g = Guest::default();
    let mut state = State::Outside;
    for (t, line) in lines {
        if line.contains("Kernel panic - not syncing") && g.panic.is_none() {
            g.panic = Some(line.trim().to_string());
        }
        let l = line.trim_start();
        if (l.starts_with('[') && (l.contains("] BUG: ") || l.contains("] Oops: ")))
            || l.starts_with("BUG: ")
            || l.starts_with("Oops: ")
        {
            g.oops.push(l.to_string());
        }
        if let Some(m) = marker(line) {
            let f = marker_fields(m);
            if m.starts_with(M_INIT) {
                g.init_at = Some(*t);
                g.uname = field(&f, "kernel");
            } else if m.starts_with(M_MOUNTS) {
                g.mounts = f;
            } else if m.starts_with(M_SUITE_BEGIN) {
                g.modes.push(ModeRun {
                    mode: field(&f, "mode").unwrap_or_default(),
                    started: *t,
                    ..Default::default()
                });
                state = State::Suite(g.modes.len() - 1);
            } else if m.starts_with(M_SUITE_END) {
                if let State::Suite(i) = state {
                    let run = &mut g.modes[i];
                    run.end_seen = true;
                    run.rc = field(&f, "rc").and_then(|r| r.parse().ok());
                    run.ended = Some(*t);
                }
                state = State::Outside;
            } else if m.starts_with(M_CHECK_BEGIN) {
                g.check = Some(CheckRun::default());
                state = State::Check;
            } else if m.starts_with(M_CHECK_END) {
                if let Some(c) = g.check.as_mut() {
                    c.end_seen = true;
                    c.rc = field(&f, "rc").and_then(|r| r.parse().ok());
                }
                state = State::Outside;
            } else if m.starts_with(M_STDERR_BEGIN) {
                let what = field(&f, "what").unwrap_or_default();
                let target = if what == "check" {
                    Target::Check
                } else if let Some(mode) = what.strip_prefix("suite-") {
                    g.modes.iter().rposition(|r| r.mode == mode).map(Target::Suite).unwrap_or(Target::Nowhere)
                } else {
                    Target::Nowhere
                };
                state = State::Stderr(target);
            } else if m.starts_with(M_STDERR_END) {
                state = State::Outside;
            } else if m.starts_with(M_DONE) {
                g.done_at = Some(*t);
                state = State::Outside;
            }
            continue;
        }
        match state {
            State::Outside => {}
            State::Suite(i) => {
                let text = line.trim();
                if text.is_empty() {
                    continue;
                }
                match scenario(text) {
                    Some(s) => g.modes[i].results.push(s),
                    None if is_kernel_message(text) => {}
                    None => g.modes[i].other.push(text.to_string()),
                }
            }
            State::Check => {
                if let Some(c) = g.check.as_mut() {
                    c.stdout.push(line.clone());
                }
            }
            State::Stderr(Target::Suite(i)) => g.modes[i].stderr.push(line.clone()),
            State::Stderr(Target::Check) => {
                if let Some(c) = g.check.as_mut() {
                    c.stderr.push(line.clone());
                }
            }
            State::Stderr(Target::Nowhere) => {}
        }
    }
    g
}

/// `[    2.868644] ...`: a printk line with the kernel's timestamp.
fn is_kernel_message(text: &str) -> bool {
    text.strip_prefix('[').and_then(|r| r.split_once(']')).is_some_and(|(ts, _)| {
        let ts = ts.trim();
        !ts.is_empty() && ts.chars().all(|c| c.is_ascii_digit() || c == '.')
    })
}

/// Remove terminal escape sequences (SeaBIOS clears the screen on the serial console).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut it = line.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\u{1b}' {
            if !c.is_control() || c == '\t' {
                out.push(c);
            }
            continue;
        }
        // ESC c and friends are two characters; CSI runs to a final byte in @..~
        if it.next() == Some('[') {
            for n in it.by_ref() {
                if ('@'..='~').contains(&n) {
                    break;
                }
            }
        }
    }
    out
}

/// One suite line: `{"scenario":..,"mode":..,"result":..,"detail":..}`.
fn scenario(text: &str) -> Option<Scenario> {
    if !text.starts_with('{') {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    let text_of = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    Some(Scenario {
        name: v.get("scenario")?.as_str()?.to_string(),
        result: text_of("result"),
        detail: text_of("detail"),
    })
}

/// The attach plan from `check --output json`: one line per hook, the chosen mode and
/// target, then every refused mode with its reason. Raw lines if it is not JSON.
pub fn attach_plan(check: &CheckRun) -> Vec<String> {
    let text = check.stdout.join("\n");
    let Ok(doc) = serde_json::from_str::<Value>(&text) else {
        return check.stdout.iter().filter(|l| !l.trim().is_empty()).take(30).cloned().collect();
    };
    let mut out = Vec::new();
    for h in doc["plan"].as_array().into_iter().flatten() {
        let chosen = h["chosen"].as_str().unwrap_or("none");
        out.push(format!(
            "{:<18} {:<10} {}",
            h["hook"].as_str().unwrap_or("?"),
            chosen,
            h["target"].as_str().unwrap_or("")
        ));
        for c in h["candidates"].as_array().into_iter().flatten() {
            if let Some(why) = c["refused"].as_str() {
                out.push(format!(
                    "{:<18} {:<10} {} refused: {why}",
                    "",
                    "",
                    c["mode"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    if let Some(e) = doc["attach_error"].as_str() {
        out.push(format!("cannot attach: {e}"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The matrix

pub struct Column {
    pub kernel: String,
    pub mode: String,
    pub results: Vec<Scenario>,
}

fn rank(result: &str) -> u8 {
    match result {
        "pass" => 1,
        "skip" => 0,
        _ => 2, // fail and anything unknown
    }
}

pub fn cell(result: &str) -> String {
    match result {
        "pass" => "pass".into(),
        "fail" => "FAIL".into(),
        "skip" => "skip".into(),
        other => format!("?{other}"),
    }
}

/// Rows = scenarios in order of first appearance, columns = kernel×mode (two header lines:
/// the kernel over its first mode, then the modes).
pub fn matrix(columns: &[Column]) -> String {
    let mut rows: Vec<String> = Vec::new();
    for c in columns {
        for s in &c.results {
            if !rows.contains(&s.name) {
                rows.push(s.name.clone());
            }
        }
    }
    let lookup = |c: &Column, row: &str| -> String {
        c.results
            .iter()
            .filter(|s| s.name == row)
            .max_by_key(|s| rank(&s.result))
            .map(|s| cell(&s.result))
            .unwrap_or_else(|| "\u{2014}".into())
    };
    let first = rows.iter().map(|r| r.chars().count()).max().unwrap_or(0).max("scenario \\ mode".len());
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let new_kernel = i == 0 || columns[i - 1].kernel != c.kernel;
            let k = if new_kernel { c.kernel.chars().count() } else { 0 };
            c.mode.chars().count().max(k).max(4)
        })
        .collect();
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let sep = |i: usize| if i > 0 && columns[i - 1].kernel != columns[i].kernel { " | " } else { "  " };
    let mut out = String::new();
    let mut h1 = pad("kernel", first);
    let mut h2 = pad("scenario \\ mode", first);
    for (i, (c, w)) in columns.iter().zip(&widths).enumerate() {
        let new_kernel = i == 0 || columns[i - 1].kernel != c.kernel;
        h1.push_str(sep(i));
        h1.push_str(&pad(if new_kernel { &c.kernel } else { "" }, *w));
        h2.push_str(sep(i));
        h2.push_str(&pad(&c.mode, *w));
    }
    out.push_str(h1.trim_end());
    out.push('\n');
    out.push_str(h2.trim_end());
    out.push('\n');
    out.push_str(&"-".repeat(h2.trim_end().chars().count()));
    out.push('\n');
    if rows.is_empty() {
        out.push_str("(no scenario results)\n");
    }
    for r in &rows {
        let mut line = pad(r, first);
        for (i, (c, w)) in columns.iter().zip(&widths).enumerate() {
            line.push_str(sep(i));
            line.push_str(&pad(&lookup(c, r), *w));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<(f64, String)> {
        text.lines().enumerate().map(|(i, l)| (i as f64, l.to_string())).collect()
    }

    #[test]
    fn parses_console() {
        let console = "\
[    0.000000] Linux version 6.1.0\r
=====PIDFD-VM-INIT kernel=6.1.0-37-cloud-amd64=====\r
=====PIDFD-VM-MOUNTS sysfs=ok tracefs=ok bpffs=ok cgroup2=ok pids=cgroup2 btf=yes=====\r
=====PIDFD-SUITE-BEGIN mode=fexit=====\r
{\"scenario\":\"clone_pidfd_ok\",\"mode\":\"fexit\",\"result\":\"pass\",\"detail\":\"\"}\r
{\"scenario\":\"clone_pidfd_emfile\",\"mode\":\"fexit\",\"result\":\"fail\",\"detail\":\"no event\"}\r
starting agent\r
=====PIDFD-SUITE-END mode=fexit rc=1=====\r
=====PIDFD-STDERR-BEGIN what=suite-fexit=====\r
error: boom\r
=====PIDFD-STDERR-END=====\r
=====PIDFD-CHECK-BEGIN=====\r
{\"plan\":[{\"hook\":\"copy_process\",\"chosen\":\"fexit\",\"target\":\"copy_process\",\"candidates\":[{\"mode\":\"fexit\",\"refused\":null}]}]}\r
=====PIDFD-CHECK-END rc=0=====\r
=====PIDFD-VM-DONE=====\r
[    9.1] reboot: Power down\r
";
        let g = parse(&lines(console));
        assert_eq!(g.uname.as_deref(), Some("6.1.0-37-cloud-amd64"));
        assert_eq!(g.modes.len(), 1);
        let m = &g.modes[0];
        assert_eq!((m.mode.as_str(), m.rc, m.end_seen), ("fexit", Some(1), true));
        assert_eq!(m.results.len(), 2);
        assert_eq!(m.results[1].result, "fail");
        assert_eq!(m.other, vec!["starting agent"]);
        assert_eq!(m.stderr, vec!["error: boom"]);
        let c = g.check.as_ref().unwrap();
        assert_eq!(c.rc, Some(0));
        assert_eq!(
            attach_plan(c),
            vec![format!("{:<18} {:<10} {}", "copy_process", "fexit", "copy_process")]
        );
        assert!(g.done_at.is_some() && g.panic.is_none());
        let tbl = matrix(&[
            Column { kernel: "6.1".into(), mode: "fexit".into(), results: m.results.clone() },
            Column { kernel: "6.12".into(), mode: "fexit".into(), results: vec![] },
        ]);
        assert!(tbl.contains("clone_pidfd_emfile  FAIL  | \u{2014}"), "{tbl}");
    }

    #[test]
    fn strips_escapes() {
        assert_eq!(
            strip_ansi("\u{1b}c\u{1b}[?7l\u{1b}[2J=====PIDFD-VM-INIT x====="),
            "=====PIDFD-VM-INIT x====="
        );
        assert!(is_kernel_message("[    2.871849]  dump_stack+0x6b/0x83"));
        assert!(!is_kernel_message("[1, 2]"));
    }

    #[test]
    fn detects_panic() {
        let g = parse(&lines("[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n"));
        assert!(g.panic.is_some());
    }
}
