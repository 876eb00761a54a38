//! Reading a guest's console: markers, the suite's JSON lines, `check` output; the matrix.

use super::initramfs::{
    M_BTF, M_CHECK_BEGIN, M_CHECK_END, M_DONE, M_INIT, M_MOUNTS, M_STDERR_BEGIN, M_STDERR_END, M_SUITE_BEGIN,
    M_SUITE_END, M_TAINT,
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
    /// `/proc/sys/kernel/tainted` when /init started and before it ended (`M_TAINT`).
    pub taint: Option<(u64, u64)>,
    /// The kernel's `WARNING:` lines (dmesg, printed after `M_TAINT`).
    pub warnings: Vec<String>,
    /// The guest kernel crashed (Oops, BUG or panic) before the suite's first marker, that is
    /// before any of our programs ran: see [`pre_suite_crash`].
    pub pre_suite_crash: Option<Crash>,
    /// First bytes of the guest's /sys/kernel/btf/vmlinux, hex.
    pub btf_hdr: Option<String>,
}

impl Guest {
    /// `hdr_len` of the guest's vmlinux BTF (24 up to 7.1; larger where the header grew).
    pub fn btf_hdr_len(&self) -> Option<u32> {
        let h = self.btf_hdr.as_deref()?;
        let b: Vec<u8> =
            (0..h.len() / 2).filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()).collect();
        match b.get(..8)? {
            [0x9f, 0xeb, 1, _, l0, l1, l2, l3] => Some(u32::from_le_bytes([*l0, *l1, *l2, *l3])),
            [0xeb, 0x9f, 1, _, l0, l1, l2, l3] => Some(u32::from_be_bytes([*l0, *l1, *l2, *l3])),
            _ => None,
        }
    }
}

/// A guest kernel crash, from its console lines (printk timestamps removed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Crash {
    /// The first `Oops: ...`, `BUG: ...` or `Kernel panic - not syncing: ...` line.
    pub first: String,
    /// Where it happened: the `RIP: ...` (amd64) or `pc : ...` (arm64) line after `first`.
    pub at: Option<String>,
    /// The `Kernel panic - not syncing: ...` line, when `first` is not already it.
    pub panic: Option<String>,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.first)?;
        for more in [&self.at, &self.panic].into_iter().flatten() {
            write!(f, " / {more}")?;
        }
        Ok(())
    }
}

/// The text of a kernel crash line: `Oops: ...`, `BUG: ...` (amd64), `Internal error: Oops:
/// ...` (arm64) or `Kernel panic - not syncing: ...`, with its printk timestamp removed. The
/// timestamp may follow other text on the same console line: SeaBIOS leaves "Booting from
/// ROM.." unterminated, so with `quiet` the kernel's first line continues it.
fn crash_text(line: &str) -> Option<&str> {
    const HEADS: [&str; 4] = ["Oops: ", "BUG: ", "Internal error: Oops", "Kernel panic - not syncing"];
    if let Some(p) = line.find("Kernel panic - not syncing") {
        return Some(line[p..].trim_end());
    }
    let l = line.trim_start();
    if HEADS.iter().any(|h| l.starts_with(h)) {
        return Some(l.trim_end());
    }
    // "... [    1.483960] Oops: int3 ...": a timestamp anywhere, then one of the heads
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find("] ") else { break };
        let ts = after[..close].trim();
        let text = &after[close + 2..];
        if !ts.is_empty()
            && ts.chars().all(|c| c.is_ascii_digit() || c == '.')
            && HEADS.iter().any(|h| text.starts_with(h))
        {
            return Some(text.trim_end());
        }
        rest = after;
    }
    None
}

/// The faulting location of a crash report: `RIP: 0010:sched_clock_cpu+0x9/0x1f0` (amd64,
/// without the segment) or `pc : el0_svc+0x34/0x120` (arm64).
fn crash_location(line: &str) -> Option<String> {
    let text = strip_printk_time(line);
    if let Some(rip) = text.strip_prefix("RIP: ") {
        let rip = rip.trim();
        let rip = rip.split_once(':').filter(|(seg, _)| seg.len() == 4).map_or(rip, |(_, at)| at);
        return Some(format!("RIP: {rip}"));
    }
    text.starts_with("pc : ").then(|| text.trim_end().to_string())
}

/// `[    1.483960] text` → `text`.
fn strip_printk_time(line: &str) -> &str {
    let l = line.trim_start();
    if is_kernel_message(l)
        && let Some((_, text)) = l.split_once("] ")
    {
        return text.trim_start();
    }
    l
}

/// The decision `cargo xtask vm` takes after a guest's first boot: `Some(crash)` when the
/// guest kernel crashed before the suite's first marker (`=====PIDFD-SUITE-BEGIN`, or
/// `=====PIDFD-CHECK-BEGIN` should `check` ever run first). No program of ours had run then,
/// so it is an infrastructure fault (emulator, guest kernel), not a test result: the guest is
/// booted once more. A crash after that marker is a result (`None` here) and fails the guest.
pub fn pre_suite_crash(g: &Guest) -> Option<&Crash> {
    g.pre_suite_crash.as_ref()
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
    // Until the suite's (or check's) first marker, crash lines are collected in `early`.
    let mut ours_started = false;
    let mut early: Option<Crash> = None;
    for (t, line) in lines {
        if line.contains("Kernel panic - not syncing") && g.panic.is_none() {
            g.panic = Some(line.trim().to_string());
        }
        if g.taint.is_some()
            && let Some(w) = line.find("WARNING:")
        {
            g.warnings.push(line[w..].trim().to_string());
        }
        let crash = crash_text(line);
        if let Some(c) = crash
            && !c.starts_with("Kernel panic")
        {
            g.oops.push(line.trim_start().to_string());
        }
        if !ours_started {
            match (&mut early, crash) {
                (None, Some(c)) => early = Some(Crash { first: c.to_string(), ..Default::default() }),
                (Some(e), Some(c)) if c.starts_with("Kernel panic") && e.panic.is_none() && e.first != c => {
                    e.panic = Some(c.to_string())
                }
                (Some(e), None) if e.at.is_none() => e.at = crash_location(line),
                _ => {}
            }
        }
        if let Some(m) = marker(line) {
            let f = marker_fields(m);
            if m.starts_with(M_INIT) {
                g.init_at = Some(*t);
                g.uname = field(&f, "kernel");
            } else if m.starts_with(M_BTF) {
                g.btf_hdr = field(&f, "hdr").filter(|h| !h.is_empty());
            } else if m.starts_with(M_MOUNTS) {
                g.mounts = f;
            } else if m.starts_with(M_SUITE_BEGIN) {
                ours_started = true;
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
                ours_started = true;
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
            } else if m.starts_with(M_TAINT) {
                let num = |k: &str| field(&f, k).and_then(|v| v.parse().ok());
                g.taint = num("before").zip(num("after"));
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
    g.pre_suite_crash = early;
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

/// Whether the guest's `check --output json` chose the entry-state store its kernel series
/// should get (docs/cli.md `entry_state`): task-local storage from 5.12 on (tracing programs
/// may call bpf_task_storage_get since 5.12), the hash before. None when it did; else one line.
pub fn entry_state(check: &CheckRun, series: &str) -> Option<String> {
    let doc = serde_json::from_str::<Value>(&check.stdout.join("\n")).ok()?;
    let got = doc["entry_state"]["store"].as_str();
    let (major, minor) =
        series.split_once('.').map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(0)))?;
    let want = if (major, minor) >= (5u32, 12u32) { "task_storage" } else { "hash" };
    (got != Some(want))
        .then(|| format!("entry state store: want {want} on {series}, check says {}", doc["entry_state"]))
}

/// The kernel's W taint (TAINT_WARN, bit 9: a `WARN()` fired) set while /init ran, with the
/// first `WARNING:` line; None when it was not, or was already set at boot (not ours).
pub fn warned_during_run(g: &Guest) -> Option<String> {
    const TAINT_WARN: u64 = 1 << 9;
    let (before, after) = g.taint?;
    (after & TAINT_WARN != 0 && before & TAINT_WARN == 0).then(|| {
        format!(
            "guest kernel WARNING during the run (taint {before} -> {after}): {}",
            g.warnings.first().map_or("no WARNING line in dmesg", String::as_str)
        )
    })
}

/// What the guest's `check --output json` said about the hooked functions' prototypes.
#[derive(Debug, Clone, PartialEq)]
pub enum Prototypes {
    /// `check` did not run or did not finish.
    NotRun,
    /// The agent's JSON has no `prototypes` key (a build without the prototype check).
    Absent,
    /// Every entry has `ok: true`; how many.
    Ok(usize),
    /// The entries with `ok: false` (or malformed), one line each.
    Bad(Vec<String>),
}

impl Prototypes {
    pub fn cell(&self) -> String {
        match self {
            Prototypes::NotRun => "not run".into(),
            Prototypes::Absent => "not checked (agent lacks the key)".into(),
            Prototypes::Ok(n) => format!("ok ({n})"),
            Prototypes::Bad(b) => format!("FAIL ({})", b.len()),
        }
    }
}

/// Judge the `prototypes` array of `check --output json`: each entry
/// `{"function": str, "expected_params": int, "btf_params": int|null, "ok": bool}`.
pub fn prototypes(check: &CheckRun) -> Prototypes {
    let text = check.stdout.join("\n");
    let Ok(doc) = serde_json::from_str::<Value>(&text) else {
        return Prototypes::Bad(vec!["`check --output json` did not print JSON".into()]);
    };
    let Some(p) = doc.get("prototypes") else { return Prototypes::Absent };
    let Some(list) = p.as_array() else {
        return Prototypes::Bad(vec![format!("`prototypes` is not an array: {p}")]);
    };
    let mut bad = Vec::new();
    for e in list {
        let func = e["function"].as_str().unwrap_or("?");
        match e["ok"].as_bool() {
            Some(true) => {}
            Some(false) => bad.push(format!(
                "{func}: the agent expects {} parameter(s), kernel BTF has {}",
                e["expected_params"],
                if e["btf_params"].is_null() {
                    "no such function".to_string()
                } else {
                    e["btf_params"].to_string()
                }
            )),
            None => bad.push(format!("malformed entry (no boolean `ok`): {e}")),
        }
    }
    if bad.is_empty() { Prototypes::Ok(list.len()) } else { Prototypes::Bad(bad) }
}

/// One kernel's column group in the markdown matrix.
pub struct KernelView<'a> {
    pub series: &'a str,
    pub arch: &'a str,
    pub package: &'a str,
    pub uname: Option<&'a str>,
    pub btf_hdr_len: Option<u32>,
    pub guest: &'a Guest,
    pub unavailable: Option<&'a str>,
    pub problems: &'a [String],
    pub prototypes: &'a Prototypes,
    pub seconds: Option<f64>,
    /// The first boot's crash when the guest kernel crashed before the suite and was booted
    /// once more (the table shows the second boot).
    pub retried: Option<&'a str>,
}

fn md_cell(result: Option<&Scenario>) -> &'static str {
    match result.map(|s| s.result.as_str()) {
        Some("pass") => "pass",
        Some("skip") => "skip",
        Some("fail") => "**FAIL**",
        Some(_) => "**?**",
        None => "—",
    }
}

/// The scenario × kernel × arch × mode table as markdown (one column per kernel and mode),
/// then a row per kernel for the prototype check and the guest, then every skip's reason.
pub fn markdown(
    kernels: &[KernelView],
    modes: &[String],
    wall: std::time::Duration,
    jobs: usize,
    smp: u32,
) -> String {
    let mut rows: Vec<String> = Vec::new();
    for k in kernels {
        for m in &k.guest.modes {
            for s in &m.results {
                if !rows.contains(&s.name) {
                    rows.push(s.name.clone());
                }
            }
        }
    }
    let find = |k: &KernelView, mode: &str, row: &str| -> Option<Scenario> {
        k.guest
            .modes
            .iter()
            .filter(|m| m.mode == mode)
            .flat_map(|m| &m.results)
            .filter(|s| s.name == row)
            .max_by_key(|s| rank(&s.result))
            .cloned()
    };
    let mut out = String::new();
    out.push_str("# pidfd-trace kernel matrix\n\n");
    out.push_str(&format!(
        "Scenario × kernel × arch × mode, from `cargo xtask vm` (qemu TCG, {jobs} guest(s) at a time, {smp} vCPU(s) each); wall time {:.0} s.\n",
        wall.as_secs_f64()
    ));
    out.push_str("Cells: pass, **FAIL**, skip (reason below), — (no result: see the guest row).\n\n");
    let mut h1 = String::from("| scenario |");
    let mut h2 = String::from("|---|");
    for k in kernels {
        for m in modes {
            h1.push_str(&format!(" {} {}<br>{m} |", k.series, k.arch));
            h2.push_str("---|");
        }
    }
    out.push_str(&h1);
    out.push('\n');
    out.push_str(&h2);
    out.push('\n');
    for r in &rows {
        let mut line = format!("| {r} |");
        for k in kernels {
            for m in modes {
                line.push_str(&format!(" {} |", md_cell(find(k, m, r).as_ref())));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    let mut proto = String::from("| *prototypes (check)* |");
    let mut guest = String::from("| *guest* |");
    for k in kernels {
        for _ in modes {
            proto.push_str(&format!(
                " {} |",
                if k.unavailable.is_some() { "—".to_string() } else { k.prototypes.cell() }
            ));
            let g = if k.unavailable.is_some() {
                "skipped: not in the archive".to_string()
            } else if k.problems.is_empty() {
                "ok".to_string()
            } else {
                "**FAIL**".to_string()
            };
            guest.push_str(&format!(" {g} |"));
        }
    }
    out.push_str(&proto);
    out.push('\n');
    out.push_str(&guest);
    out.push_str("\n\n## Kernels\n\n| kernel | arch | package | uname | BTF hdr_len | guest time | status |\n|---|---|---|---|---|---|---|\n");
    for k in kernels {
        let mut status = match (k.unavailable, k.problems.is_empty()) {
            (Some(why), _) => format!("skipped: {why}"),
            (None, true) => "ok".into(),
            (None, false) => format!("**FAIL**: {}", k.problems.join("; ")),
        };
        if let Some(crash) = k.retried {
            status.push_str(&format!(" (second boot: the first crashed before the suite: {crash})"));
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            k.series,
            k.arch,
            k.package,
            k.uname.unwrap_or("—"),
            k.btf_hdr_len.map(|l| l.to_string()).unwrap_or_else(|| "—".into()),
            k.seconds.map(|s| format!("{s:.0} s")).unwrap_or_else(|| "—".into()),
            status.replace('|', "/")
        ));
    }
    // Skip reasons, grouped: (scenario, reason) -> kernel/mode list
    let mut skips: Vec<(String, String, Vec<String>)> = Vec::new();
    for k in kernels {
        for m in &k.guest.modes {
            for s in m.results.iter().filter(|s| s.result == "skip") {
                let at = format!("{} {} {}", k.series, k.arch, m.mode);
                match skips.iter_mut().find(|(n, d, _)| *n == s.name && *d == s.detail) {
                    Some(e) => e.2.push(at),
                    None => skips.push((s.name.clone(), s.detail.clone(), vec![at])),
                }
            }
        }
    }
    if !skips.is_empty() {
        out.push_str("\n## Skips and their reasons\n\n");
        for (name, detail, at) in &skips {
            out.push_str(&format!(
                "- `{name}`: {} — {}\n",
                if detail.is_empty() { "(no reason given)" } else { detail },
                at.join(", ")
            ));
        }
    }
    let fails: Vec<String> = kernels
        .iter()
        .flat_map(|k| {
            k.guest.modes.iter().flat_map(move |m| {
                m.results
                    .iter()
                    .filter(|s| s.result != "pass" && s.result != "skip")
                    .map(move |s| format!("- {} {} {} `{}`: {}", k.series, k.arch, m.mode, s.name, s.detail))
            })
        })
        .collect();
    if !fails.is_empty() {
        out.push_str("\n## Failures\n\n");
        for f in fails {
            out.push_str(&f);
            out.push('\n');
        }
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
    fn prototype_check() {
        let check =
            |json: &str| CheckRun { rc: Some(0), end_seen: true, stdout: vec![json.into()], stderr: vec![] };
        assert_eq!(prototypes(&check(r#"{"plan":[]}"#)), Prototypes::Absent);
        assert_eq!(
            prototypes(&check(
                r#"{"prototypes":[{"function":"copy_process","expected_params":4,"btf_params":4,"ok":true}]}"#
            )),
            Prototypes::Ok(1)
        );
        let bad = prototypes(&check(
            r#"{"prototypes":[{"function":"copy_process","expected_params":4,"btf_params":4,"ok":true},
                {"function":"pidfs_alloc_file","expected_params":2,"btf_params":3,"ok":false},
                {"function":"anon_inode_getfile","expected_params":4,"btf_params":null,"ok":false}]}"#,
        ));
        let Prototypes::Bad(lines) = bad else { panic!("{bad:?}") };
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("pidfs_alloc_file") && lines[0].contains("BTF has 3"), "{lines:?}");
        assert!(lines[1].contains("no such function"), "{lines:?}");
        assert!(matches!(prototypes(&check("not json")), Prototypes::Bad(_)));
        assert!(matches!(prototypes(&check(r#"{"prototypes":{}}"#)), Prototypes::Bad(_)));
        assert_eq!(Prototypes::Absent.cell(), "not checked (agent lacks the key)");
    }

    #[test]
    fn btf_header_length_from_the_console() {
        let g = parse(&lines("=====PIDFD-VM-BTF hdr=9feb01002000000000000000=====\n"));
        assert_eq!(g.btf_hdr_len(), Some(32));
        let g = parse(&lines("=====PIDFD-VM-BTF hdr=9feb01001800000000000000a8f92e00=====\n"));
        assert_eq!(g.btf_hdr_len(), Some(24));
        assert_eq!(parse(&lines("=====PIDFD-VM-BTF hdr=====\n")).btf_hdr_len(), None);
    }

    #[test]
    fn a_warning_during_the_run_is_a_problem_one_from_boot_is_not() {
        let warn = "[   40.1] WARNING: CPU: 1 PID: 300 at kernel/bpf/verifier.c:10163 bpf_check+0x1/0x2\n";
        let g = parse(&lines(&format!("=====PIDFD-VM-TAINT before=0 after=512=====\n{warn}")));
        assert_eq!(g.taint, Some((0, 512)));
        let w = warned_during_run(&g).expect("W taint set during the run");
        assert!(
            w.contains("taint 0 -> 512") && w.contains("WARNING: CPU: 1 PID: 300 at kernel/bpf/verifier.c"),
            "{w}"
        );
        let g = parse(&lines(&format!("{warn}=====PIDFD-VM-TAINT before=0 after=512=====\n")));
        assert!(
            warned_during_run(&g).unwrap().contains("no WARNING line"),
            "lines before the marker are not dmesg's"
        );
        let g = parse(&lines(&format!("=====PIDFD-VM-TAINT before=512 after=512=====\n{warn}")));
        assert_eq!(warned_during_run(&g), None, "already tainted at boot");
        let g = parse(&lines("=====PIDFD-VM-TAINT before=0 after=4096=====\n"));
        assert_eq!(warned_during_run(&g), None, "another taint bit (unsigned module)");
        assert_eq!(warned_during_run(&parse(&lines(""))), None, "an older /init without the marker");
    }

    #[test]
    fn markdown_table() {
        let console = "=====PIDFD-SUITE-BEGIN mode=kprobe=====\n{\"scenario\":\"a\",\"result\":\"pass\"}\n{\"scenario\":\"b\",\"result\":\"skip\",\"detail\":\"needs 6.9\"}\n=====PIDFD-SUITE-END mode=kprobe rc=0=====\n";
        let g = parse(&lines(console));
        let none = Guest::default();
        let view = |series, guest, unavailable, prototypes| KernelView {
            series,
            arch: "arm64",
            package: "p",
            uname: None,
            btf_hdr_len: Some(24),
            guest,
            unavailable,
            problems: &[],
            prototypes,
            seconds: Some(60.0),
            retried: (series == "6.1").then_some("Oops: int3: 0000 [#1] SMP NOPTI"),
        };
        let md = markdown(
            &[
                view("6.1", &g, None, &Prototypes::Absent),
                view("7.9", &none, Some("nothing named linux-image-7.9.*-cloud-arm64"), &Prototypes::NotRun),
            ],
            &["kprobe".to_string()],
            std::time::Duration::from_secs(90),
            1,
            2,
        );
        assert!(md.contains("| scenario | 6.1 arm64<br>kprobe | 7.9 arm64<br>kprobe |"), "{md}");
        assert!(md.contains("| a | pass | — |") && md.contains("| b | skip | — |"), "{md}");
        assert!(md.contains("| *prototypes (check)* | not checked (agent lacks the key) | — |"), "{md}");
        assert!(md.contains("skipped: nothing named linux-image-7.9"), "{md}");
        assert!(md.contains("- `b`: needs 6.9 — 6.1 arm64 kprobe"), "{md}");
        assert!(
            md.contains("| 60 s | ok (second boot: the first crashed before the suite: Oops: int3: 0000 [#1] SMP NOPTI) |"),
            "{md}"
        );
    }

    /// The amd64 6.18 guest of a fresh-clone CI run (target/vm/logs/amd64-6.18.log, trimmed):
    /// the kernel hit a stale int3 1.5 s into boot, before /init. The kernel's first line
    /// continues SeaBIOS's unterminated "Booting from ROM..", behind a screen-clearing escape.
    const INT3_AT_BOOT: &str = "\
\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r
Booting from ROM..\u{1b}c\u{1b}[?7l\u{1b}[2J[    1.483960] Oops: int3: 0000 [#1] SMP NOPTI\r
[    1.484370] CPU: 0 UID: 0 PID: 51 Comm: kdamond.0 Not tainted 6.18.15+deb13-cloud-amd64 #1 PREEMPT(lazy)  Debian 6.18.15-1~bpo13+1 \r
[    1.484470] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014\r
[    1.484590] RIP: 0010:sched_clock_cpu+0x9/0x1f0\r
[    1.484999] RSP: 0018:ff70fef3803bbc18 EFLAGS: 00000002\r
[    1.485302] Call Trace:\r
[    1.486136]  __schedule+0x11c/0xcf0\r
[    1.486790] ---[ end trace 0000000000000000 ]---\r
[    1.486855] RIP: 0010:sched_clock_cpu+0x9/0x1f0\r
[    1.487048] Kernel panic - not syncing: Fatal exception in interrupt\r
[    3.551694] Shutting down cpus with NMI\r
";

    /// Console lines as `qemu::boot` hands them over (escapes stripped, CR/LF removed).
    fn console(text: &str) -> Vec<(f64, String)> {
        text.lines().enumerate().map(|(i, l)| (i as f64, strip_ansi(l.trim_end_matches('\r')))).collect()
    }

    const SUITE_OK: &str = "\
=====PIDFD-VM-INIT kernel=6.18.15+deb13-cloud-amd64=====
=====PIDFD-VM-MOUNTS sysfs=ok tracefs=ok bpffs=ok cgroup2=ok pids=cgroup2 btf=yes=====
=====PIDFD-SUITE-BEGIN mode=tracepoint=====
{\"scenario\":\"clone_pidfd_ok\",\"mode\":\"tracepoint\",\"result\":\"pass\",\"detail\":\"\"}
=====PIDFD-SUITE-END mode=tracepoint rc=0=====
";

    #[test]
    fn crash_before_the_suite_is_an_infrastructure_fault() {
        let g = parse(&console(INT3_AT_BOOT));
        let c = pre_suite_crash(&g).expect("a crash before the suite");
        assert_eq!(c.first, "Oops: int3: 0000 [#1] SMP NOPTI");
        assert_eq!(c.at.as_deref(), Some("RIP: sched_clock_cpu+0x9/0x1f0"));
        assert_eq!(c.panic.as_deref(), Some("Kernel panic - not syncing: Fatal exception in interrupt"));
        assert_eq!(
            c.to_string(),
            "Oops: int3: 0000 [#1] SMP NOPTI / RIP: sched_clock_cpu+0x9/0x1f0 / \
             Kernel panic - not syncing: Fatal exception in interrupt"
        );
        // the judge still sees it (a second such boot fails the guest as before)
        assert!(g.panic.is_some() && g.oops.len() == 1, "{:?} {:?}", g.panic, g.oops);
        assert!(g.init_at.is_none() && g.modes.is_empty());

        // an Oops before the suite is one even if the guest then went on and ran it
        let g = parse(&console(&format!(
            "[    0.9] BUG: kernel NULL pointer dereference, address: 0000000000000008\n[    0.9] RIP: 0010:kdamond_fn+0x1/0x10\n{SUITE_OK}"
        )));
        let c = pre_suite_crash(&g).expect("an Oops before the suite");
        assert_eq!(
            c.to_string(),
            "BUG: kernel NULL pointer dereference, address: 0000000000000008 / RIP: kdamond_fn+0x1/0x10"
        );

        // a panic with no Oops before it: /init died before the suite
        let g = parse(&console(
            "[    2.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n",
        ));
        assert_eq!(
            pre_suite_crash(&g).map(|c| c.to_string()).as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100")
        );

        // arm64 words it differently
        let g = parse(&console(
            "[    3.1] Internal error: Oops: 0000000096000004 [#1] SMP\n[    3.1] pc : sched_clock_cpu+0x10/0x50\n[    3.2] lr : update_rq_clock+0x3c/0x1a0\n",
        ));
        assert_eq!(
            pre_suite_crash(&g).map(|c| c.to_string()).as_deref(),
            Some("Internal error: Oops: 0000000096000004 [#1] SMP / pc : sched_clock_cpu+0x10/0x50")
        );
    }

    #[test]
    fn crash_after_the_suite_started_is_a_result() {
        // a clean guest: nothing to retry
        let g = parse(&console(SUITE_OK));
        assert_eq!(pre_suite_crash(&g), None);
        assert!(g.panic.is_none() && g.oops.is_empty());

        // the same Oops once the suite's first marker is out: the guest fails, no second boot
        let during = format!(
            "=====PIDFD-VM-INIT kernel=6.18.15+deb13-cloud-amd64=====\n=====PIDFD-SUITE-BEGIN mode=fentry=====\n{}",
            INT3_AT_BOOT.lines().skip(1).collect::<Vec<_>>().join("\n")
        );
        let g = parse(&console(&during));
        assert_eq!(pre_suite_crash(&g), None);
        assert!(g.panic.is_some() && !g.oops.is_empty());
        assert!(!g.modes[0].end_seen);

        // after `check` began (it runs our agent too)
        let g = parse(&console(
            "=====PIDFD-CHECK-BEGIN=====\n[    9.0] Oops: general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP NOPTI\n",
        ));
        assert_eq!(pre_suite_crash(&g), None);
        assert_eq!(g.oops.len(), 1);

        // kernel lines that merely mention BUG or Oops are no crash
        let g = parse(&console(
            "[    0.1] x86/cpu: SGX disabled by BIOS. BUG: no\n[    0.2] Oopsie: not a crash\n",
        ));
        assert_eq!(pre_suite_crash(&g), None);
        assert!(g.oops.is_empty());
    }

    #[test]
    fn detects_panic() {
        let g = parse(&lines("[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n"));
        assert!(g.panic.is_some());
    }
}
