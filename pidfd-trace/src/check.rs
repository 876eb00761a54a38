//! `pidfd-trace check`: what this kernel supports and the attach plan, without attaching.
use anyhow::Result;
use serde_json::json;

use crate::{
    cli::{CheckArgs, Output},
    hooks,
    plan::HookPlan,
    preflight,
    session::{KernelFacts, Session},
};

/// `pidfd-trace check`: exit 0 if this kernel can be traced, 1 (with the report) if not.
pub fn run(args: CheckArgs) -> Result<()> {
    preflight::check_privileges(preflight::effective_caps())?;
    let facts = KernelFacts::gather(&args.kernel);
    let btf = preflight::check_btf(&facts.btf_path);
    let tracefs = crate::tracefs::ensure_mounted();
    // The parameter count of every kernel function a function hook attaches to here, from
    // this kernel's BTF (docs/cli.md: the VM matrix fails a guest on `"ok": false`).
    let prototypes =
        match std::fs::read(&facts.btf_path).ok().and_then(|raw| crate::btf::Btf::parse(&raw).ok()) {
            Some(b) => hooks::check_prototypes(&|f| b.has_func(f), &|f| b.func_params(f).map(|p| p.len())),
            None => Vec::new(),
        };
    // The plan exactly as trace/serve would carry it out: a real trial load and attach,
    // detached again when the session is dropped.
    let (plan, blind_spots, attach_error) = match Session::start(&args.kernel) {
        Ok(s) => (s.plan.clone(), s.blind_spots(), None),
        Err(e) => (Vec::new(), Vec::new(), Some(format!("{e:#}"))),
    };
    let verdict = |r: &Result<(), crate::plan::Refusal>| match r {
        Ok(()) => "yes".to_string(),
        Err(e) => format!("no: {e}"),
    };
    match args.output {
        Output::Json => {
            let doc = json!({
                "kernel": facts.release,
                "btf": { "path": facts.btf_path, "present": btf.is_ok() },
                "lockdown": facts.lockdown,
                "tracefs": tracefs.as_ref().map(|(p, _)| p.display().to_string()).map_err(|e| e.to_string()),
                "program_types": {
                    "fentry": verdict(&facts.support.fentry),
                    "kprobe": verdict(&facts.support.kprobe),
                    "tracepoint": verdict(&facts.support.tracepoint),
                },
                "thread_pidfd": facts.sem.thread_pidfd,
                "close_tracking": CLOSE_TRACKING,
                "plan": plan,
                "prototypes": prototypes,
                // What this configuration cannot see (README "What the agent cannot see").
                "blind_spots": blind_spots,
                "attach_error": attach_error,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => {
            println!("kernel         {}", facts.release);
            println!(
                "btf            {} ({})",
                facts.btf_path.display(),
                if btf.is_ok() { "present" } else { "MISSING" }
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
            println!("pidfd closes   {CLOSE_TRACKING}");
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

/// Where open/close information comes from (README "Open pidfds"): no mode hooks a pidfd's
/// release yet, so in every mode, tracepoint mode included, it is the periodic inventory.
const CLOSE_TRACKING: &str = "not traced by any hook; the periodic /proc inventory (`ls`, serve's pidfd_trace_open_pidfds and pidfd_trace_stale_pidfds gauges) is the source of open and close information";

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
            println!("  {:<18} {:<11} failure stages come from errno and tracepoint facts only", "", "");
        }
    }
}
