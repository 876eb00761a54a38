//! `pidfd-trace check`: what this kernel supports and the attach plan, without attaching.
use anyhow::Result;
use serde_json::json;

use crate::{
    cli::{CheckArgs, Output},
    hooks,
    plan::HookPlan,
    preflight,
    session::{KernelFacts, Session, SessionError},
};

/// Version of the `check --output json` document (docs/cli.md); raised when a key changes
/// meaning or goes away, never for an added key.
pub const SCHEMA_VERSION: u32 = 1;

/// `pidfd-trace check`: exit 0 if this kernel can be traced, 1 (with the report) if not.
pub fn run(args: CheckArgs) -> Result<()> {
    if let Err(e) = preflight::check_privileges(preflight::effective_caps()) {
        if args.output == Output::Json {
            print_error_document(&e.to_string(), 1);
        }
        return Err(e.into());
    }
    let facts = KernelFacts::gather(&args.kernel);
    // Present and parseable, as Session::start needs it: a file that exists but is not BTF
    // (truncated, bind-mounted over) is as fatal as a missing one, and said so here.
    let parsed = preflight::check_btf(&facts.btf_path).map_err(SessionError::from).and_then(|()| {
        let path = facts.btf_path.clone();
        let raw = std::fs::read(&path).map_err(|err| SessionError::ReadBtf { path: path.clone(), err })?;
        crate::btf::Btf::parse(&raw).map_err(|err| SessionError::ParseBtf { path, err })
    });
    let tracefs = crate::tracefs::ensure_mounted();
    // The parameter count of every kernel function a function hook attaches to here, from
    // this kernel's BTF (docs/cli.md: the VM matrix fails a guest on `"ok": false`).
    let prototypes = match &parsed {
        Ok(b) => hooks::check_prototypes(&|f| b.has_func(f), &|f| b.func_params(f).map(|p| p.len())),
        Err(_) => Vec::new(),
    };
    let btf = parsed.map(drop);
    // The plan exactly as trace/serve would carry it out: a real trial load and attach,
    // detached again when the session is dropped.
    let (plan, blind_spots, state_store, attach_error) = match Session::start(&args.kernel) {
        Ok(s) => (s.plan.clone(), s.blind_spots(), Some(s.probes.state_store.clone()), None),
        Err(e) => (Vec::new(), Vec::new(), None, Some(format!("{e:#}"))),
    };
    let verdict = |r: &Result<(), crate::plan::Refusal>| match r {
        Ok(()) => "yes".to_string(),
        Err(e) => format!("no: {e}"),
    };
    match args.output {
        Output::Json => {
            let support = |r: &Result<(), crate::plan::Refusal>| json!({ "ok": r.is_ok(), "reason": r.as_ref().err().map(|e| e.to_string()) });
            let doc = json!({
                "schema_version": SCHEMA_VERSION,
                "ok": btf.is_ok() && attach_error.is_none(),
                "versions": {
                    "pidfd_trace": env!("CARGO_PKG_VERSION"),
                    "kernel": facts.release,
                    "schema": SCHEMA_VERSION,
                },
                "kernel": facts.release,
                "btf": {
                    "path": facts.btf_path,
                    "present": btf.is_ok(),
                    "reason": btf.as_ref().err().map(|e| e.to_string()),
                },
                "lockdown": facts.lockdown,
                "tracefs": match &tracefs {
                    Ok((p, mounted)) => json!({ "ok": true, "path": p, "mounted_by_check": mounted, "reason": null }),
                    Err(e) => json!({ "ok": false, "path": null, "mounted_by_check": false, "reason": e.to_string() }),
                },
                "program_types": {
                    "fentry": support(&facts.support.fentry),
                    "kprobe": support(&facts.support.kprobe),
                    "tracepoint": support(&facts.support.tracepoint),
                },
                "thread_pidfd": facts.sem.thread_pidfd,
                "close_tracking": close_tracking(&plan),
                "closes_traced": closes_traced(&plan),
                "entry_state": state_store.as_ref().map(|st| json!({
                    "store": st.key(),
                    "reason": st.reason(),
                })),
                "plan": plan.iter().map(plan_entry).collect::<Vec<_>>(),
                "prototypes": prototypes,
                // What this configuration cannot see (README "What the agent cannot see").
                "blind_spots": blind_spots,
                "attach_error": attach_error,
                "error": attach_error.as_ref().map(|m| error_object(m, 1))
                    .or_else(|| btf.as_ref().err().map(|e| error_object(&e.to_string(), 1))),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => {
            println!("kernel         {}", facts.release);
            println!(
                "btf            {} ({})",
                facts.btf_path.display(),
                match &btf {
                    Ok(()) => "present".to_string(),
                    Err(SessionError::Preflight(_)) => "MISSING".to_string(),
                    Err(e) => format!("UNUSABLE: {e}"),
                }
            );
            println!(
                "lockdown       {}",
                facts.lockdown.as_deref().unwrap_or("unknown (securityfs not mounted)")
            );
            match &tracefs {
                Ok((p, _)) => println!("tracefs        {}", p.display()),
                Err(e) => println!("tracefs        MISSING: {e}"),
            }
            println!(
                "thread pidfds  {}",
                if facts.sem.thread_pidfd { "yes (6.9+)" } else { "no: CLONE_PIDFD|CLONE_THREAD is EINVAL" }
            );
            println!("pidfd closes   {}", close_tracking(&plan));
            if let Some(st) = &state_store {
                println!("entry state    {}", st.describe());
            }
            println!("program types");
            println!("  fentry/fexit {}", verdict(&facts.support.fentry));
            println!("  kprobe       {}", verdict(&facts.support.kprobe));
            println!("  tracepoint   {}", verdict(&facts.support.tracepoint));
            println!("prototypes (parameters: expected / in BTF)");
            for p in &prototypes {
                let btf = p.btf_params.map_or("absent".to_string(), |n| n.to_string());
                println!(
                    "  {:<18} {} / {btf}{}",
                    p.function,
                    p.expected_params,
                    if p.ok { "" } else { "  MISMATCH" }
                );
            }
            println!("attach plan");
            print_plan(&plan);
            if let Some(e) = &attach_error {
                println!("  cannot attach: {e}");
            }
            println!("blind spots (what this configuration cannot see)");
            for b in &blind_spots {
                println!("  - {b}");
            }
        }
    }
    btf?;
    if let Some(e) = attach_error {
        anyhow::bail!(e);
    }
    Ok(())
}

/// The error object of `check --output json`: what went wrong and the exit status it ends
/// with (docs/cli.md).
pub fn error_object(message: &str, exit_status: i32) -> serde_json::Value {
    json!({ "message": message, "exit_status": exit_status })
}

/// When check cannot produce its report (not privileged, bad command line): the document
/// with only `schema_version`, `ok: false`, `versions` and `error`, on stdout.
pub fn print_error_document(message: &str, exit_status: i32) {
    let doc = json!({
        "schema_version": SCHEMA_VERSION,
        "ok": false,
        "versions": { "pidfd_trace": env!("CARGO_PKG_VERSION"), "schema": SCHEMA_VERSION },
        "error": error_object(message, exit_status),
    });
    println!("{doc}");
}

/// One hook of the plan: the keys the VM matrix reads (`hook`, `target`, `chosen`,
/// `candidates[].mode/refused`), plus `kind`, `candidates[].ok` and `cannot_see`.
fn plan_entry(h: &HookPlan) -> serde_json::Value {
    let row = crate::hooks::events().find(|e| e.name() == h.hook);
    // `path`: a creation path no syscall tracepoint sees (hooks.rs `blind`).
    let kind = match row {
        None => "function",
        Some(r) if r.tracepoint.syscalls.is_empty() => "path",
        Some(_) => "syscall",
    };
    json!({
        "hook": h.hook,
        "kind": kind,
        "target": h.target,
        "chosen": h.chosen.map(|m| m.name()),
        "candidates": h.candidates.iter().map(|c| json!({
            "mode": c.mode.name(),
            "ok": c.refused.is_none(),
            "refused": c.refused.as_ref().map(|r| r.to_string()),
        })).collect::<Vec<_>>(),
        "cannot_see": if h.chosen.is_none() { cannot_see(h.hook) } else { &[] },
    })
}

/// What is missing from events when a function hook is not attached (tracepoints only), or,
/// for a creation path no syscall tracepoint sees (`kind` `path`), why it is not visible.
/// With a function hook attached (fexit or kprobe) nothing is missing; syscall hooks see
/// every call.
pub fn cannot_see(hook: &str) -> &'static [&'static str] {
    if let Some(row) = crate::hooks::events().find(|e| e.name() == hook && !e.blind.is_empty()) {
        return row.blind;
    }
    match hook {
        "copy_process" => &[
            "copy_process_ns: how long copy_process ran",
            "whether a failed clone reached copy_process at all",
        ],
        "pidfd_creation" => &[
            "pidfd_allocated: whether a failed creation had already made its pidfd",
            "the fd_alloc and user_memory stages are inferred from errno and the pidfd read-back, not observed",
        ],
        "cgroup_can_fork" => &[
            "the cgroup controllers' refusal itself: pids_cgroup is inferred from the pids counter and limit at the failed exit",
        ],
        "autokill" => &[
            "pidfd_autokill: the SIGKILL the kernel sends when a clone3 CLONE_PIDFD_AUTOKILL pidfd is closed (no syscall carries it)",
        ],
        "setns" | "process_madvise" | "process_mrelease" | "pidfd_ioctl" | "waitid" => {
            &["this use of a pidfd: the kernel has no such syscall, so nothing can make the call"]
        }
        crate::hooks::FUNNEL_HOOK => &[
            "scm_pidfd and fanotify: the pidfds recvmsg (SCM_PIDFD) and fanotify reads (FAN_REPORT_PIDFD) install",
        ],
        "coredump_helper" => &["coredump: the pidfd a core_pattern helper finds at fd 3"],
        crate::hooks::RELEASE_HOOK => &[
            "pidfd closes and lifetimes (pidfd_trace_pidfds_closed_total stays 0): the periodic /proc inventory stands in",
        ],
        _ => &["what this function probe adds (README: How it attaches)"],
    }
}

/// Whether the release hook is attached: pidfd closes are counted and timed by the kernel.
fn closes_traced(plan: &[HookPlan]) -> bool {
    plan.iter().any(|h| h.hook == hooks::RELEASE_HOOK && h.chosen.is_some())
}

/// Where close information comes from (README "Open pidfds: close tracking"): the release
/// hook in function-probe modes; in tracepoint mode (or when no release function exists) no
/// close is visible and the periodic inventory stands in.
fn close_tracking(plan: &[HookPlan]) -> String {
    match plan.iter().find(|h| h.hook == hooks::RELEASE_HOOK) {
        Some(h) if h.chosen.is_some() => format!(
            "traced: {} {} on every pidfd's last close (pidfd_trace_pidfds_closed_total, pidfd_trace_pidfd_lifetime_seconds); the /proc inventory still gives open and stale counts",
            h.target,
            h.chosen.map_or("", |m| m.name())
        ),
        Some(_) => "not visible in tracepoint mode (the pidfd_release hook needs fentry or kprobes); the periodic /proc inventory (`ls`, serve's pidfd_trace_open_pidfds and pidfd_trace_stale_pidfds gauges) stands in".to_string(),
        None => "not visible: this kernel's BTF has no pidfd release function (pidfd_release, pidfs_file_release or __fput); the periodic /proc inventory (`ls`, serve's pidfd_trace_open_pidfds and pidfd_trace_stale_pidfds gauges) stands in".to_string(),
    }
}

fn print_plan(plan: &[HookPlan]) {
    println!("  {:<18} {:<11} WHERE / WHY NOT BETTER", "HOOK", "MODE");
    for h in plan {
        let mode = h.chosen.map_or("none", |m| m.name());
        println!("  {:<18} {:<11} {}", h.hook, mode, h.target);
        for c in &h.candidates {
            if let Some(why) = &c.refused {
                println!("  {:<18} {:<11} {} refused: {why}", "", "", c.mode.name());
            }
        }
        if h.chosen.is_none() {
            for what in cannot_see(h.hook) {
                println!("  {:<18} {:<11} cannot see: {what}", "", "");
            }
        }
    }
}
