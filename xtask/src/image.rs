//! `cargo xtask image`: OCI images of the static agent on an empty base, built offline with
//! buildah, one per architecture plus a manifest list; and the test that runs the image under
//! podman exactly as deploy/kubernetes/daemonset.yaml runs it.
//!
//! Podman on hosts like this one (hybrid cgroups, no CAP_SYS_RESOURCE) needs the runc
//! runtime, the cgroupfs manager and no default rlimits; `podman()` sets all three.
use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::{
    cross::{self, Target},
    kube,
    util::{ensure_apt, exec, output, succeeds},
};

/// Debian packages the image build and the podman test need.
pub const PACKAGES: &[&str] = &["buildah", "podman", "runc", "curl"];
/// The local image name (no registry is involved; push it where your nodes pull from).
pub const NAME: &str = "localhost/pidfd-trace";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `--arch` and `--test`, as for `cargo xtask deb`.
pub type Options = crate::cross::ArchOptions;

/// One built image.
pub struct Image {
    /// `localhost/pidfd-trace:<version>-<arch>`.
    pub tag: String,
    /// Its uncompressed size as podman reports it.
    pub size: u64,
    /// The OCI archive written beside the binaries (`podman load -i` / `skopeo copy` it).
    pub archive: PathBuf,
}

/// `cargo xtask image`: cross-builds the agent, makes an image per architecture and a
/// manifest list `localhost/pidfd-trace:<version>` over them.
pub fn run(opts: &Options, root: &Path) -> Result<()> {
    if opts.test {
        return test(root);
    }
    ensure_apt(PACKAGES)?;
    let mut tags = Vec::new();
    for arch in &opts.arch {
        let t = cross::by_deb_arch(arch)?;
        let bins = cross::build(root, t.triple)?;
        let img = build(root, t, &bins.agent)?;
        println!(
            "image: {} ({} bytes, {:.1} MiB), archive {}",
            img.tag,
            img.size,
            mib(img.size),
            img.archive.display()
        );
        tags.push(img.tag);
    }
    let list = format!("{NAME}:{VERSION}");
    // A stale list of the same name would keep old images; replace it.
    let _ = succeeds(Command::new("buildah").args(["manifest", "rm", &list]));
    exec(Command::new("buildah").args(["manifest", "create", &list]))?;
    for tag in &tags {
        exec(Command::new("buildah").args(["manifest", "add", &list, &format!("containers-storage:{tag}")]))?;
    }
    println!("image: manifest list {list} over {}", tags.join(", "));
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The OCI labels: version, source, revision, licence.
fn labels(root: &Path) -> Vec<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut l = vec![
        "org.opencontainers.image.title=pidfd-trace".to_string(),
        "org.opencontainers.image.description=eBPF agent: pid file descriptor metrics and events".into(),
        format!("org.opencontainers.image.version={VERSION}"),
        format!("org.opencontainers.image.licenses={}", env!("CARGO_PKG_LICENSE")),
    ];
    if let Some(rev) = git(&["rev-parse", "HEAD"]) {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
        l.push(format!("org.opencontainers.image.revision={rev}{}", if dirty { "-dirty" } else { "" }));
    }
    // Where the source lives: PIDFD_TRACE_SOURCE_URL, else the clone's origin, else the
    // commit's tree is all there is to name.
    let source =
        std::env::var("PIDFD_TRACE_SOURCE_URL").ok().or_else(|| git(&["remote", "get-url", "origin"]));
    if let Some(src) = source {
        l.push(format!("org.opencontainers.image.source={src}"));
    }
    l
}

/// Builds `localhost/pidfd-trace:<version>-<arch>` from the static `agent` of target `t`: an
/// empty base, the binary at /usr/bin/pidfd-trace (root-owned, read-only), nothing else; the
/// agent writes nothing, so the image runs with a read-only root filesystem.
pub fn build(root: &Path, t: &Target, agent: &Path) -> Result<Image> {
    ensure_apt(PACKAGES)?;
    let agent = &cross::stripped(agent, t)?;
    let tag = format!("{NAME}:{VERSION}-{}", t.deb_arch);
    let ctr =
        output(Command::new("buildah").args(["from", "--arch", t.deb_arch, "--os", "linux", "scratch"]))?;
    let result = (|| -> Result<()> {
        exec(
            Command::new("buildah")
                .args(["copy", "--chown", "0:0", "--chmod", "0555", &ctr])
                .arg(agent)
                .arg("/usr/bin/pidfd-trace"),
        )?;
        let mut config = Command::new("buildah");
        config.args(["config", "--arch", t.deb_arch, "--os", "linux"]);
        config.args(["--entrypoint", r#"["/usr/bin/pidfd-trace"]"#, "--cmd", "serve"]);
        config.args([
            "--user",
            "0:0",
            "--workingdir",
            "/",
            "--port",
            "29100/tcp",
            "--stop-signal",
            "SIGTERM",
        ]);
        for l in labels(root) {
            config.arg("--label").arg(l);
        }
        exec(config.arg(&ctr))?;
        exec(
            Command::new("buildah")
                .args(["commit", "--quiet", "--format", "oci", &ctr, &tag])
                .stdout(Stdio::null()),
        )?;
        Ok(())
    })();
    let _ = succeeds(Command::new("buildah").args(["rm", &ctr]));
    result?;
    let size: u64 = output(podman().args(["image", "inspect", "--format", "{{.Size}}", &tag]))?
        .parse()
        .context("podman image inspect printed no size")?;
    let dir = root.join("target/images");
    std::fs::create_dir_all(&dir)?;
    let archive = dir.join(format!("pidfd-trace-{VERSION}-{}.oci.tar", t.deb_arch));
    let _ = std::fs::remove_file(&archive);
    exec(
        Command::new("buildah")
            .args(["push", "--quiet", &tag])
            .arg(format!("oci-archive:{}", archive.display())),
    )?;
    Ok(Image { tag, size, archive })
}

/// `podman` with the runtime, cgroup manager and containers.conf this kind of host needs.
fn podman() -> Command {
    let conf = std::env::temp_dir().join("pidfd-trace-containers.conf");
    // Written each time: cheap, and a file another run removed cannot break this one.
    let _ = std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n");
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", conf).args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    c
}

/// Removes the test container however the test ends.
struct Container {
    name: String,
    child: Option<Child>,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "2", &self.name]).output();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The podman test: the host-architecture image, run with the DaemonSet's pid namespace,
/// user, capabilities, read-only root, host mounts and command line (read from
/// deploy/kubernetes/daemonset.yaml), in a network namespace of its own as in a pod. Checks
/// that podman applied exactly those settings, that both probe paths answer, and that an
/// event this process makes on the host arrives with this process's host pid.
pub fn test(root: &Path) -> Result<()> {
    ensure_apt(PACKAGES)?;
    let t = cross::host()?;
    let bins = cross::build(root, t.triple)?;
    let img = build(root, t, &bins.agent)?;
    println!("image: {} is {} bytes ({:.1} MiB)", img.tag, img.size, mib(img.size));
    let labels = output(podman().args(["image", "inspect", "--format", "{{json .Labels}}", &img.tag]))?;
    let labels: serde_json::Value = serde_json::from_str(&labels).context("image labels are not JSON")?;
    ensure!(
        labels["org.opencontainers.image.version"] == VERSION,
        "image version label is not {VERSION}: {labels}"
    );
    ensure!(labels["org.opencontainers.image.revision"].is_string(), "image has no revision label: {labels}");
    let spec = kube::agent_container(root)?;
    let (opts, args) = spec.podman_args()?;
    let name = format!("pidfd-trace-test-{}", std::process::id());
    let mut run = podman();
    // A network namespace of its own, like a pod's: the manifest's fixed port clashes with
    // nothing, and the test reaches it inside that namespace.
    run.args(["run", "--rm", "--name", &name, "--network", "none"]).args(&opts).arg(&img.tag).args(&args);
    println!("image: {:?}", run);
    let mut child = run
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start podman")?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let mut ctr = Container { name: name.clone(), child: Some(child) };
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut s = String::new();
        let mut r = BufReader::new(stderr);
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.push_str(&String::from_utf8_lossy(&buf[..n]));
            *log2.lock().unwrap() = s.clone();
        }
    });
    let agent_log = || log.lock().map(|s| s.clone()).unwrap_or_default();
    let result = (|| -> Result<()> {
        // Ready: the container runs and its readiness path answers inside its namespace.
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = loop {
            if let Some(Some(status)) = ctr.child.as_mut().map(|c| c.try_wait()).transpose()? {
                bail!("the container exited ({status}) before it was ready");
            }
            let pid =
                output(podman().args(["inspect", "--format", "{{.State.Pid}}", &name]).stderr(Stdio::null()))
                    .ok()
                    .and_then(|p| p.parse::<u32>().ok())
                    .filter(|p| *p > 0);
            if let Some(pid) = pid
                && get(pid, spec.port, &spec.readiness_path).is_ok()
            {
                break pid;
            }
            ensure!(Instant::now() < deadline, "the agent in the container was not ready within 60 s");
            std::thread::sleep(Duration::from_millis(300));
        };
        check_applied(&name, &spec)?;
        // An event on the host, from this process: pidfd_open of itself.
        let me = std::process::id();
        let want = |l: &str| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["event"] == "pidfd_open"
                    && v["pid"] == me
                    && v["target_pid"] == me
                    && v["ret"].as_i64() >= Some(0)
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = 'found: loop {
            // SAFETY: pidfd_open of our own pid; the fd is closed right away.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) };
            ensure!(fd >= 0, "pidfd_open failed: {}", std::io::Error::last_os_error());
            // SAFETY: fd is ours.
            unsafe { libc::close(fd as i32) };
            let until = Instant::now() + Duration::from_secs(2);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(l) if want(&l) => break 'found l,
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(e) => bail!("the container's stdout closed: {e}"),
                }
            }
            ensure!(
                Instant::now() < deadline,
                "no pidfd_open event with pid {me} from the container within 20 s"
            );
        };
        println!(
            "image: the containerized agent reported this process's (host pid {me}) pidfd_open:\n  {line}"
        );
        let metrics = get(pid, spec.port, &spec.readiness_path)?;
        ensure!(
            metrics.contains("pidfd_trace_pidfds_created_total{source=\"pidfd_open\"}"),
            "{} answers without pidfd_trace_pidfds_created_total{{source=\"pidfd_open\"}}",
            spec.readiness_path
        );
        get(pid, spec.port, &spec.liveness_path)?;
        println!(
            "image: {} and {} answer on port {} in the container's network namespace",
            spec.readiness_path, spec.liveness_path, spec.port
        );
        // SIGTERM: the agent detaches and exits 0.
        exec(podman().args(["stop", "--time", "20", &name]).stdout(Stdio::null()))?;
        let status = ctr.child.take().expect("running").wait()?;
        ensure!(status.success(), "the containerized agent exited with {status} on SIGTERM");
        Ok(())
    })();
    result.map_err(|e| anyhow!("{e:#}\n--- agent stderr ---\n{}", agent_log()))?;
    drop(ctr);
    println!("image: podman test passed (stopped cleanly with SIGTERM)");
    Ok(())
}

/// GET `path` on 127.0.0.1:`port` inside the network namespace of process `pid`.
fn get(pid: u32, port: u16, path: &str) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["curl", "-sSf", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .stderr(Stdio::null())
        .output()
        .context("cannot run nsenter curl")?;
    ensure!(out.status.success(), "GET {path} on port {port} failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What podman really set up equals what the manifest asks for: command line, pid namespace,
/// read-only root, effective capabilities and mounts.
fn check_applied(name: &str, spec: &kube::AgentContainer) -> Result<()> {
    let text = output(podman().args(["inspect", name]))?;
    let v: serde_json::Value = serde_json::from_str(&text).context("podman inspect printed no JSON")?;
    let c = &v[0];
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
    };
    let mut cmdline = vec![c["Path"].as_str().unwrap_or("").to_string()];
    cmdline.extend(strs(&c["Args"]));
    let mut want_cmd = spec.command.clone();
    want_cmd.extend(spec.args.clone());
    ensure!(cmdline == want_cmd, "container command line {cmdline:?}, manifest {want_cmd:?}");
    ensure!(c["HostConfig"]["PidMode"] == "host" && spec.host_pid, "pid namespace is not the host's");
    ensure!(
        c["HostConfig"]["ReadonlyRootfs"] == true && spec.read_only_root,
        "root filesystem is not read-only"
    );
    let mut caps = strs(&c["EffectiveCaps"]);
    caps.sort();
    let mut want_caps: Vec<String> = spec.cap_add.iter().map(|c| format!("CAP_{c}")).collect();
    want_caps.sort();
    ensure!(caps == want_caps, "container capabilities {caps:?}, manifest {want_caps:?}");
    let unconfined = strs(&c["HostConfig"]["SecurityOpt"]).iter().any(|o| o == "seccomp=unconfined");
    ensure!(
        unconfined == (spec.seccomp == "Unconfined"),
        "seccomp profile is not the manifest's {}",
        spec.seccomp
    );
    let mut mounts: Vec<kube::HostMount> = c["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| kube::HostMount {
            host: m["Source"].as_str().unwrap_or("").into(),
            dest: m["Destination"].as_str().unwrap_or("").into(),
            read_only: m["RW"] == false,
        })
        .collect();
    mounts.sort();
    let mut want_mounts = spec.mounts.clone();
    want_mounts.sort();
    ensure!(mounts == want_mounts, "container mounts {mounts:?}, manifest {want_mounts:?}");
    println!(
        "image: podman ran {:?} with pid=host, read-only root, seccomp {}, capabilities {caps:?}, mounts {:?}",
        want_cmd,
        spec.seccomp,
        want_mounts.iter().map(|m| format!("{}:{}:ro", m.host, m.dest)).collect::<Vec<_>>()
    );
    Ok(())
}
