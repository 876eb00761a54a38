//! The Kubernetes manifests under deploy/kubernetes: the agent container as the DaemonSet
//! declares it (the podman test in image.rs runs exactly that), the PrometheusRule generated
//! from the Prometheus rule file (`cargo xtask manifests`), and a check that every manifest
//! parses and carries what a node agent needs.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_yaml_ng::Value;

/// The directory of the manifests, relative to the workspace root.
pub const DIR: &str = "deploy/kubernetes";
/// The Prometheus rule file (Prometheus' own format) the PrometheusRule is made from.
pub const RULES: &str = "deploy/prometheus/pidfd-trace.rules.yml";
/// The generated PrometheusRule.
pub const PROMETHEUS_RULE: &str = "deploy/kubernetes/prometheusrule.yaml";

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Write nothing; check that every manifest parses and carries what it must, and that
    /// deploy/kubernetes/prometheusrule.yaml is up to date (what `cargo xtask test` runs).
    #[arg(long)]
    pub check: bool,
}

/// A hostPath volume mounted into the agent container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostMount {
    pub host: String,
    pub dest: String,
    pub read_only: bool,
}

/// The agent container of the DaemonSet, with the pod-level settings that shape it.
#[derive(Debug)]
pub struct AgentContainer {
    pub host_pid: bool,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub run_as_user: u64,
    pub run_as_group: u64,
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    pub read_only_root: bool,
    /// `seccompProfile.type`: RuntimeDefault, Unconfined (Localhost is not supported here).
    pub seccomp: String,
    /// Capabilities as Kubernetes spells them (`BPF`, `ALL`).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub mounts: Vec<HostMount>,
    /// The `metrics` container port.
    pub port: u16,
    pub readiness_path: String,
    pub liveness_path: String,
}

impl AgentContainer {
    /// The `podman run` options that give a container the same pid namespace, user,
    /// capabilities, root filesystem and host mounts (before the image name), and the
    /// entrypoint and arguments (after it).
    pub fn podman_args(&self) -> Result<(Vec<String>, Vec<String>)> {
        let mut opts = Vec::new();
        if self.host_pid {
            opts.push("--pid=host".to_string());
        }
        opts.push(format!("--user={}:{}", self.run_as_user, self.run_as_group));
        if self.privileged {
            opts.push("--privileged".into());
        }
        if !self.allow_privilege_escalation {
            opts.push("--security-opt=no-new-privileges".into());
        }
        if self.read_only_root {
            // Kubernetes mounts no tmpfs over /tmp, /run and /var/tmp; podman would.
            opts.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        match self.seccomp.as_str() {
            "RuntimeDefault" => {}
            "Unconfined" => opts.push("--security-opt=seccomp=unconfined".into()),
            other => bail!("seccompProfile type {other} has no podman equivalent here"),
        }
        let caps = |v: &[String]| v.iter().map(|c| c.to_lowercase()).collect::<Vec<_>>().join(",");
        if !self.cap_drop.is_empty() {
            opts.push(format!("--cap-drop={}", caps(&self.cap_drop)));
        }
        if !self.cap_add.is_empty() {
            opts.push(format!("--cap-add={}", caps(&self.cap_add)));
        }
        // readOnly hostPath mounts are recursive binds; `recursiveReadOnly: IfPossible` asks
        // for read-only submounts too, which podman 4.3 cannot do (no `rro`): plain `ro`.
        for m in &self.mounts {
            opts.push(format!("--volume={}:{}:{}", m.host, m.dest, if m.read_only { "ro" } else { "rw" }));
        }
        if !self.command.is_empty() {
            opts.push(format!("--entrypoint={}", serde_json::to_string(&self.command)?));
        }
        Ok((opts, self.args.clone()))
    }
}

fn read_yaml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `v[k1][k2]...`, or an error naming the path and the file.
fn at<'a>(v: &'a Value, path: &[&str], file: &str) -> Result<&'a Value> {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        cur = cur.get(*k).ok_or_else(|| anyhow!("{file}: no {}", path[..=i].join(".")))?;
    }
    Ok(cur)
}

fn str_at<'a>(v: &'a Value, path: &[&str], file: &str) -> Result<&'a str> {
    at(v, path, file)?.as_str().ok_or_else(|| anyhow!("{file}: {} is not a string", path.join(".")))
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>> {
    v.as_sequence()
        .ok_or_else(|| anyhow!("{what} is not a list"))?
        .iter()
        .map(|s| s.as_str().map(str::to_string).ok_or_else(|| anyhow!("{what} holds a non-string")))
        .collect()
}

/// The DaemonSet's agent container.
pub fn agent_container(root: &Path) -> Result<AgentContainer> {
    let file = format!("{DIR}/daemonset.yaml");
    let ds = read_yaml(&root.join(&file))?;
    ensure!(str_at(&ds, &["kind"], &file)? == "DaemonSet", "{file}: kind is not DaemonSet");
    let pod = at(&ds, &["spec", "template", "spec"], &file)?;
    let containers = at(pod, &["containers"], &file)?.as_sequence().context("containers is not a list")?;
    let [c] = containers.as_slice() else {
        bail!("{file}: expected exactly one container, found {}", containers.len());
    };
    let sc = at(c, &["securityContext"], &file)?;
    let bool_at = |v: &Value, k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
    let num_at =
        |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| anyhow!("{file}: no {k}"));
    // Volumes by name: every mount must be a hostPath.
    let volumes = at(pod, &["volumes"], &file)?.as_sequence().context("volumes is not a list")?;
    let host_path = |name: &str| -> Result<String> {
        let v = volumes
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| anyhow!("{file}: volumeMount {name} has no volume"))?;
        Ok(str_at(v, &["hostPath", "path"], &file)?.to_string())
    };
    let mut mounts = Vec::new();
    for m in c.get("volumeMounts").and_then(Value::as_sequence).into_iter().flatten() {
        let name = str_at(m, &["name"], &file)?;
        mounts.push(HostMount {
            host: host_path(name)?,
            dest: str_at(m, &["mountPath"], &file)?.to_string(),
            read_only: bool_at(m, "readOnly", false),
        });
    }
    let port = at(c, &["ports"], &file)?
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some("metrics"))
        .and_then(|p| p.get("containerPort")?.as_u64())
        .ok_or_else(|| anyhow!("{file}: no container port named metrics"))?;
    let caps = at(sc, &["capabilities"], &file)?;
    Ok(AgentContainer {
        host_pid: bool_at(pod, "hostPID", false),
        command: c.get("command").map(|v| strings(v, "command")).transpose()?.unwrap_or_default(),
        args: c.get("args").map(|v| strings(v, "args")).transpose()?.unwrap_or_default(),
        run_as_user: num_at(sc, "runAsUser")?,
        run_as_group: num_at(sc, "runAsGroup")?,
        privileged: bool_at(sc, "privileged", false),
        allow_privilege_escalation: bool_at(sc, "allowPrivilegeEscalation", true),
        read_only_root: bool_at(sc, "readOnlyRootFilesystem", false),
        seccomp: str_at(sc, &["seccompProfile", "type"], &file)?.to_string(),
        cap_add: caps.get("add").map(|v| strings(v, "capabilities.add")).transpose()?.unwrap_or_default(),
        cap_drop: caps.get("drop").map(|v| strings(v, "capabilities.drop")).transpose()?.unwrap_or_default(),
        mounts,
        port: u16::try_from(port).context("containerPort out of range")?,
        readiness_path: str_at(c, &["readinessProbe", "httpGet", "path"], &file)?.to_string(),
        liveness_path: str_at(c, &["livenessProbe", "httpGet", "path"], &file)?.to_string(),
    })
}

/// The PrometheusRule object for the rule file's text.
pub fn prometheus_rule(rules_text: &str) -> Result<String> {
    let rules: Value = serde_yaml_ng::from_str(rules_text).with_context(|| format!("parsing {RULES}"))?;
    let groups = rules.get("groups").ok_or_else(|| anyhow!("{RULES}: no `groups:`"))?.clone();
    let mut labels = serde_yaml_ng::Mapping::new();
    labels.insert("app.kubernetes.io/name".into(), "pidfd-trace".into());
    let mut metadata = serde_yaml_ng::Mapping::new();
    metadata.insert("name".into(), "pidfd-trace".into());
    metadata.insert("labels".into(), labels.into());
    let mut spec = serde_yaml_ng::Mapping::new();
    spec.insert("groups".into(), groups);
    let mut obj = serde_yaml_ng::Mapping::new();
    obj.insert("apiVersion".into(), "monitoring.coreos.com/v1".into());
    obj.insert("kind".into(), "PrometheusRule".into());
    obj.insert("metadata".into(), metadata.into());
    obj.insert("spec".into(), spec.into());
    Ok(format!(
        "# Generated from {RULES} by `cargo xtask manifests`; do not edit (`cargo xtask test`\n\
         # checks that the two agree).\n{}",
        serde_yaml_ng::to_string(&Value::Mapping(obj))?
    ))
}

/// `cargo xtask manifests`: writes the PrometheusRule, or with --check runs `check`.
pub fn run(opts: &Options, root: &Path) -> Result<()> {
    if opts.check { check(root) } else { sync(root, true) }
}

/// Writes the PrometheusRule if it differs from what the rule file makes; with `write` false
/// fails instead.
fn sync(root: &Path, write: bool) -> Result<()> {
    let rules = std::fs::read_to_string(root.join(RULES))
        .with_context(|| format!("reading {RULES} (the alert rules the PrometheusRule is made from)"))?;
    let want = prometheus_rule(&rules)?;
    let path = root.join(PROMETHEUS_RULE);
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if !write {
        ensure!(have == want, "{PROMETHEUS_RULE} is not what {RULES} makes: run `cargo xtask manifests`");
        println!("manifests: {PROMETHEUS_RULE} matches {RULES}");
    } else if have != want {
        std::fs::write(&path, want).with_context(|| format!("writing {}", path.display()))?;
        println!("manifests: wrote {PROMETHEUS_RULE} from {RULES}");
    } else {
        println!("manifests: {PROMETHEUS_RULE} already up to date");
    }
    Ok(())
}

/// Every manifest parses and carries what a fleet needs; the PrometheusRule's groups are the
/// rule file's groups, exactly; the kustomization lists files that exist.
pub fn check(root: &Path) -> Result<()> {
    let dir = root.join(DIR);
    let mut by_kind = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let v = read_yaml(&path)?;
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        ensure!(!kind.is_empty(), "{}: no kind", path.display());
        by_kind.insert(kind, (path, v));
    }
    let get = |kind: &str| -> Result<&(PathBuf, Value)> {
        by_kind.get(kind).ok_or_else(|| anyhow!("{DIR} has no {kind}"))
    };

    // DaemonSet: the fields a node agent must have.
    let (_, ds) = get("DaemonSet")?;
    let f = "daemonset.yaml";
    let pod = at(ds, &["spec", "template", "spec"], f)?;
    let labels = at(ds, &["spec", "template", "metadata", "labels"], f)?.clone();
    ensure!(at(ds, &["spec", "selector", "matchLabels"], f)?.as_mapping().is_some(), "{f}: no selector");
    ensure!(
        pod.get("tolerations").and_then(Value::as_sequence).is_some_and(|t| !t.is_empty()),
        "{f}: no tolerations"
    );
    str_at(pod, &["priorityClassName"], f)?;
    let c = &at(pod, &["containers"], f)?[0];
    for k in [["requests", "cpu"], ["requests", "memory"], ["limits", "memory"]] {
        str_at(c, &["resources", k[0], k[1]], f)?;
    }
    let agent = agent_container(root)?;
    ensure!(agent.host_pid, "{f}: hostPID must be true (events carry host pids)");
    ensure!(agent.read_only_root, "{f}: readOnlyRootFilesystem must be true");
    ensure!(!agent.privileged && !agent.allow_privilege_escalation, "{f}: the agent must not be privileged");
    ensure!(agent.cap_drop == ["ALL"], "{f}: capabilities.drop must be [ALL], is {:?}", agent.cap_drop);
    ensure!(
        agent.cap_add == ["BPF", "PERFMON"],
        "{f}: capabilities.add must be exactly [BPF, PERFMON] (README: Privileges), is {:?}",
        agent.cap_add
    );
    ensure!(agent.mounts.iter().all(|m| m.read_only), "{f}: every host mount must be read-only");
    let telemetry =
        agent.args.iter().find_map(|a| a.strip_prefix("--web.telemetry-path=")).unwrap_or("/metrics");
    for (probe, path) in [("readiness", &agent.readiness_path), ("liveness", &agent.liveness_path)] {
        ensure!(
            path == "/" || path == telemetry,
            "{f}: {probe} probe path {path} is not one `serve` answers (/ or {telemetry})"
        );
    }
    ensure!(
        agent.args.iter().any(|a| a == &format!("--web.listen-address=:{}", agent.port)),
        "{f}: the agent does not listen on the metrics containerPort {}",
        agent.port
    );

    // Service, ServiceMonitor and PodMonitor find the agent pods and their metrics port.
    let selects =
        |sel: &Value| sel.as_mapping().is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let (_, svc) = get("Service")?;
    ensure!(
        selects(at(svc, &["spec", "selector"], "service.yaml")?),
        "service.yaml: selector misses the pods"
    );
    ensure!(
        at(svc, &["spec", "ports"], "service.yaml")?
            .as_sequence()
            .is_some_and(|p| p.iter().any(|p| p.get("name").and_then(Value::as_str) == Some("metrics"))),
        "service.yaml: no port named metrics"
    );
    let svc_labels = at(svc, &["metadata", "labels"], "service.yaml")?.clone();
    let (_, sm) = get("ServiceMonitor")?;
    let sm_sel = at(sm, &["spec", "selector", "matchLabels"], "servicemonitor.yaml")?;
    ensure!(
        sm_sel.as_mapping().is_some_and(|m| m.iter().all(|(k, v)| svc_labels.get(k) == Some(v))),
        "servicemonitor.yaml: selector misses the Service"
    );
    let (_, pm) = get("PodMonitor")?;
    ensure!(
        selects(at(pm, &["spec", "selector", "matchLabels"], "podmonitor.yaml")?),
        "podmonitor.yaml: selector misses the pods"
    );
    for (file, v, list) in
        [("servicemonitor.yaml", sm, "endpoints"), ("podmonitor.yaml", pm, "podMetricsEndpoints")]
    {
        let e = &at(v, &["spec", list], file)?[0];
        ensure!(str_at(e, &["port"], file)? == "metrics", "{file}: scrapes a port other than metrics");
        ensure!(str_at(e, &["path"], file)? == telemetry, "{file}: scrapes a path other than {telemetry}");
    }

    // PrometheusRule: the rule file's groups, identical; and the file is the generated one.
    let rules = std::fs::read_to_string(root.join(RULES))
        .with_context(|| format!("reading {RULES} (the alert rules the PrometheusRule is made from)"))?;
    let rules_v: Value = serde_yaml_ng::from_str(&rules)?;
    let (_, pr) = get("PrometheusRule")?;
    ensure!(
        Some(at(pr, &["spec", "groups"], "prometheusrule.yaml")?) == rules_v.get("groups"),
        "{PROMETHEUS_RULE}: spec.groups differ from {RULES}: run `cargo xtask manifests`"
    );
    sync(root, false)?;

    // kustomization: every resource exists; every manifest but the PodMonitor alternative
    // is listed.
    let (_, k) = get("Kustomization")?;
    let listed: BTreeSet<String> =
        strings(at(k, &["resources"], "kustomization.yaml")?, "resources")?.into_iter().collect();
    for (kind, (path, _)) in &by_kind {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if kind != "Kustomization" && kind != "PodMonitor" {
            ensure!(listed.contains(&name), "kustomization.yaml does not list {name}");
        }
    }
    for r in &listed {
        ensure!(dir.join(r).is_file(), "kustomization.yaml lists {r}, which does not exist");
    }
    // Its `images:` entry must name the DaemonSet's image, or setting a registry there does
    // nothing.
    let image = str_at(c, &["image"], f)?;
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    ensure!(
        k.get("images")
            .and_then(Value::as_sequence)
            .is_some_and(|i| i.iter().any(|i| i.get("name").and_then(Value::as_str) == Some(repo))),
        "kustomization.yaml: no images entry named {repo} (the DaemonSet's image)"
    );
    println!(
        "manifests: {} objects parse ({}); DaemonSet, monitors and PrometheusRule agree",
        by_kind.len(),
        by_kind.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        crate::workspace_root()
    }

    #[test]
    fn daemonset_maps_to_podman_options() {
        let c = agent_container(&root()).unwrap();
        let (opts, args) = c.podman_args().unwrap();
        for want in [
            "--pid=host",
            "--user=0:0",
            "--security-opt=no-new-privileges",
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop=all",
            "--cap-add=bpf,perfmon",
            "--volume=/sys/kernel/tracing:/sys/kernel/tracing:ro",
            r#"--entrypoint=["/usr/bin/pidfd-trace"]"#,
        ] {
            assert!(opts.iter().any(|o| o == want), "{want} missing from {opts:?}");
        }
        assert!(!opts.iter().any(|o| o == "--privileged"));
        assert_eq!(args.first().map(String::as_str), Some("serve"));
    }

    #[test]
    fn prometheus_rule_carries_the_groups_unchanged() {
        let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n";
        let pr: Value = serde_yaml_ng::from_str(&prometheus_rule(rules).unwrap()).unwrap();
        let want: Value = serde_yaml_ng::from_str(rules).unwrap();
        assert_eq!(pr["kind"], "PrometheusRule");
        assert_eq!(pr["spec"]["groups"], want["groups"]);
        assert!(prometheus_rule("rules: []").is_err());
    }
}
