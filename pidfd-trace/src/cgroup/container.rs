//! cgroup path → container: the path shapes container runtimes and systemd give their
//! cgroups, and the Kubernetes pod UID when the path shows one. Pure and table-tested.
use std::sync::Arc;

/// A container recognised from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime's id: 64 hex digits for OCI runtimes, the machine name for systemd-nspawn.
    pub id: Arc<str>,
    /// `docker`, `containerd`, `cri-o`, `podman`, `systemd-nspawn`, or `cri` when only the
    /// Kubernetes layout (cgroupfs driver) shows a container, not which runtime made it.
    pub runtime: &'static str,
    /// The Kubernetes pod UID (dashed form) when the path runs through a pod's cgroup.
    pub pod_uid: Option<Arc<str>>,
}

/// The innermost container the path shows, if any: a container nested in another (docker
/// in an nspawn machine) is reported as the inner one, which is the one that made the call.
pub fn parse_container(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (id, runtime) = parts.iter().enumerate().rev().find_map(|(i, part)| component(&parts[..i], part))?;
    Some(Container { id: id.into(), runtime, pod_uid: pod_uid(&parts).map(Into::into) })
}

/// One path component that names a container, given the components above it.
fn component(ancestors: &[&str], part: &str) -> Option<(String, &'static str)> {
    // systemd cgroup driver: one scope per container, `<prefix>-<id>.scope`. The conmon
    // monitor scopes (`crio-conmon-`, `libpod-conmon-`) are not the container: skipped.
    if let Some(name) = part.strip_suffix(".scope") {
        for (prefix, runtime) in [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
        ] {
            if let Some(id) = name.strip_prefix(prefix).filter(|id| is_oci_id(id)) {
                return Some((id.to_string(), runtime));
            }
        }
        // systemd-nspawn registered with machined: machine.slice/machine-<name>.scope.
        // (machined registers VMs the same way; there is no telling them apart by path.)
        if let Some(name) = name.strip_prefix("machine-")
            && ancestors.last() == Some(&"machine.slice")
        {
            return Some((unescape_unit(name), "systemd-nspawn"));
        }
    }
    // systemd-nspawn run as its template service: machine.slice/systemd-nspawn@<name>.service.
    if let Some(name) = part.strip_prefix("systemd-nspawn@").and_then(|n| n.strip_suffix(".service")) {
        return Some((unescape_unit(name), "systemd-nspawn"));
    }
    // kubelet with the systemd driver but containerd's cgroupfs naming:
    // `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`.
    let mut colon = part.split(':');
    if let (Some(_), Some(rt), Some(id), None) = (colon.next(), colon.next(), colon.next(), colon.next())
        && is_oci_id(id)
    {
        let runtime = match rt {
            "cri-containerd" => "containerd",
            "crio" => "cri-o",
            "docker" => "docker",
            _ => "cri",
        };
        return Some((id.to_string(), runtime));
    }
    // cgroupfs driver: the bare id under the runtime's parent directory.
    if let Some(id) = part.strip_prefix("libpod-").filter(|id| is_oci_id(id)) {
        return Some((id.to_string(), "podman"));
    }
    if is_oci_id(part) {
        let runtime = if ancestors.contains(&"docker") {
            "docker"
        } else if ancestors.contains(&"libpod_parent") {
            "podman"
        } else if ancestors.iter().any(|a| a.starts_with("kubepods") || a.contains("-kubepods")) {
            "cri"
        } else {
            return None;
        };
        return Some((part.to_string(), runtime));
    }
    None
}

/// `kubepods-burstable-pod<uid>.slice` (systemd driver, `_` for `-`) or `pod<uid>`
/// (cgroupfs driver), under a kubepods hierarchy that need not be at the root (kind, k3s
/// in a container, a cgroup namespace).
fn pod_uid(parts: &[&str]) -> Option<String> {
    if !parts.iter().any(|p| p.starts_with("kubepods") || p.contains("-kubepods")) {
        return None;
    }
    parts.iter().rev().find_map(|part| {
        let name = part.strip_suffix(".slice").unwrap_or(part);
        let idx = name.rfind("pod")?;
        // The `pod` must start the component or follow the slice separator `-`.
        if idx != 0 && !name[..idx].ends_with('-') {
            return None;
        }
        let uid = name[idx + 3..].replace('_', "-");
        is_uid(&uid).then_some(uid)
    })
}

fn is_oci_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// systemd unit-name escaping: `\x2d` is `-` and so on.
fn unescape_unit(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = s.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8b1c2d9a7e6f5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
    const UID: &str = "0d9e6f4c-1b2a-4c3d-8e7f-a1b2c3d4e5f6";

    #[test]
    fn path_shapes() {
        let uid_ = UID.replace('-', "_");
        type Want<'a> = Option<(&'a str, &'a str, Option<&'a str>)>;
        let cases: Vec<(String, Want)> = vec![
            // docker, systemd driver and cgroupfs driver
            (format!("/system.slice/docker-{ID}.scope"), Some((ID, "docker", None))),
            (format!("/docker/{ID}"), Some((ID, "docker", None))),
            (format!("/docker/{ID}/init.scope"), Some((ID, "docker", None))),
            // containerd under Kubernetes, systemd driver
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Some((ID, "containerd", Some(UID))),
            ),
            // guaranteed QoS: no QoS slice
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                Some((ID, "containerd", Some(UID))),
            ),
            // cri-o, and its conmon scope which is not the container
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
                ),
                Some((ID, "cri-o", Some(UID))),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-conmon-{ID}.scope"
                ),
                None,
            ),
            // Kubernetes, cgroupfs driver: runtime unknown from the path
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Some((ID, "containerd", Some(UID))),
            ),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Some((ID, "cri", Some(UID)))),
            (format!("/kubepods/pod{UID}/{ID}"), Some((ID, "cri", Some(UID)))),
            // containerd's colon form under containerd.service
            (
                format!(
                    "/system.slice/containerd.service/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{ID}"
                ),
                Some((ID, "containerd", None)),
            ),
            // podman: root (machine.slice), rootless (user slice), cgroupfs, and conmon
            (format!("/machine.slice/libpod-{ID}.scope"), Some((ID, "podman", None))),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Some((ID, "podman", None))),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                Some((ID, "podman", None)),
            ),
            (format!("/libpod_parent/libpod-{ID}"), Some((ID, "podman", None))),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            // systemd-nspawn, as a machine scope and as its template service (+ payload)
            (
                "/machine.slice/machine-debian\\x2dtest.scope".into(),
                Some(("debian-test", "systemd-nspawn", None)),
            ),
            (
                "/machine.slice/systemd-nspawn@web.service/payload/system.slice/nginx.service".into(),
                Some(("web", "systemd-nspawn", None)),
            ),
            // docker inside an nspawn machine: the inner one
            (
                format!("/machine.slice/systemd-nspawn@web.service/payload/system.slice/docker-{ID}.scope"),
                Some((ID, "docker", None)),
            ),
            // not containers
            ("/".into(), None),
            ("/user.slice/user-0.slice/session-3.scope".into(), None),
            ("/system.slice/docker.service".into(), None),
            (format!("/some/where/{ID}"), None),
            (format!("/system.slice/docker-{}.scope", &ID[..63]), None),
            (format!("/system.slice/docker-{}.scope", ID.to_uppercase()), None),
            ("/kubepods.slice/kubepods-burstable.slice".into(), None),
        ];
        for (path, want) in cases {
            let got = parse_container(&path);
            let got = got.as_ref().map(|c| (&*c.id, c.runtime, c.pod_uid.as_deref()));
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn unit_unescaping() {
        assert_eq!(unescape_unit("a\\x2db\\x2dc"), "a-b-c");
        assert_eq!(unescape_unit("plain"), "plain");
        assert_eq!(unescape_unit("bad\\xzz"), "bad\\xzz");
    }
}
