//! The alert rules' own checks, a step of `cargo xtask test` (also `cargo xtask rules`):
//! `promtool check rules` and `promtool test rules` on `deploy/prometheus/`, and what promtool
//! does not check: every alert has `for`, `severity`, `summary`, `description` and a
//! `runbook_url` whose section exists in docs/runbook.md, and the unit tests make every
//! alert both fire and stay quiet.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_yaml_ng::Value;

use crate::{e2e::RULES, util};

pub fn run(root: &Path) -> Result<()> {
    util::ensure_apt(&["prometheus"])?;
    let rules = root.join(RULES);
    util::exec(Command::new("promtool").args(["check", "rules"]).arg(&rules))?;
    let tests = test_files(root)?;
    ensure!(!tests.is_empty(), "no promtool tests in deploy/prometheus/tests/");
    util::exec(Command::new("promtool").args(["test", "rules"]).args(&tests))?;
    let alerts = check_alerts(&std::fs::read_to_string(&rules)?, &runbook_anchors(root)?)?;
    check_coverage(&alerts, &tests)?;
    println!(
        "rules: {} alerts, each with for/severity/summary/description/runbook section, each tested firing and quiet",
        alerts.len()
    );
    Ok(())
}

fn test_files(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("deploy/prometheus/tests");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    v.sort();
    Ok(v)
}

/// GitHub-style anchors of the runbook's headings.
fn runbook_anchors(root: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(root.join("docs/runbook.md")).context("reading docs/runbook.md")?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect())
}

/// Alert names, after checking each alert's fields.
fn check_alerts(rules: &str, anchors: &BTreeSet<String>) -> Result<Vec<String>> {
    let doc: Value = serde_yaml_ng::from_str(rules)?;
    let mut names = Vec::new();
    for group in doc["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let Some(name) = rule["alert"].as_str() else { continue };
            let mut missing = Vec::new();
            if rule["for"].as_str().is_none() {
                missing.push("for".to_string());
            }
            if rule["labels"]["severity"].as_str().is_none() {
                missing.push("labels.severity".into());
            }
            for a in ["summary", "description", "runbook_url"] {
                if rule["annotations"][a].as_str().is_none_or(str::is_empty) {
                    missing.push(format!("annotations.{a}"));
                }
            }
            ensure!(missing.is_empty(), "alert {name} lacks {}", missing.join(", "));
            let url = rule["annotations"]["runbook_url"].as_str().unwrap_or_default();
            let (file, anchor) =
                url.split_once('#').with_context(|| format!("{name}: runbook_url {url} has no #section"))?;
            ensure!(file.ends_with("docs/runbook.md"), "{name}: runbook_url {url} is not docs/runbook.md");
            ensure!(anchors.contains(anchor), "{name}: docs/runbook.md has no section #{anchor}");
            names.push(name.to_string());
        }
    }
    ensure!(!names.is_empty(), "no alerts in {RULES}");
    Ok(names)
}

/// Every alert has an `alert_rule_test` expecting it to fire and one expecting no alert.
fn check_coverage(alerts: &[String], tests: &[PathBuf]) -> Result<()> {
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for f in tests {
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(f)?)?;
        for t in doc["tests"].as_sequence().into_iter().flatten() {
            for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = a["alertname"].as_str().unwrap_or_default().to_string();
                match a["exp_alerts"].as_sequence() {
                    Some(s) if !s.is_empty() => fires.insert(name),
                    _ => quiet.insert(name),
                };
            }
        }
    }
    let mut gaps = Vec::new();
    for a in alerts {
        if !fires.contains(a) {
            gaps.push(format!("{a} never fires"));
        }
        if !quiet.contains(a) {
            gaps.push(format!("{a} is never tested quiet"));
        }
    }
    if !gaps.is_empty() {
        bail!("deploy/prometheus/tests: {}", gaps.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        crate::workspace_root()
    }

    #[test]
    fn shipped_rules_are_complete() {
        let root = root();
        let alerts = check_alerts(
            &std::fs::read_to_string(root.join(RULES)).unwrap(),
            &runbook_anchors(&root).unwrap(),
        )
        .unwrap();
        check_coverage(&alerts, &test_files(&root).unwrap()).unwrap();
        for want in [
            "PidfdTraceRecordsLost",
            "PidfdTraceHookNotAttached",
            "PidfdTraceAgentDown",
            "PidfdTraceAgentAbsent",
            "PidfdTraceCreationFailures",
            "PidfdTraceFdLimitReached",
            "PidfdTraceSystemFileTableFull",
            "PidfdTraceLeakSuspected",
            "PidfdTraceRiskyGetfd",
        ] {
            assert!(alerts.iter().any(|a| a == want), "{want}");
        }
    }

    #[test]
    fn incomplete_alert_is_refused() {
        let anchors = BTreeSet::from(["x".to_string()]);
        let no_runbook = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    for: 1m\n    labels: {severity: warning}\n    annotations: {summary: s, description: d}\n";
        assert!(
            check_alerts(no_runbook, &anchors).unwrap_err().to_string().contains("annotations.runbook_url")
        );
        let bad_anchor =
            no_runbook.replace("description: d}", "description: d, runbook_url: docs/runbook.md#nope}");
        assert!(check_alerts(&bad_anchor, &anchors).unwrap_err().to_string().contains("no section #nope"));
    }
}
