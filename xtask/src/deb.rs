//! `cargo xtask deb`: Debian packages (amd64, arm64) made with dpkg-deb from the static
//! agent: the binary, the hardened systemd unit, /etc/default/pidfd-trace, a logrotate file,
//! the Grafana dashboard and, when present, the Prometheus rules. And the test that installs
//! the package on this machine, runs it from the installed path, verifies the installed unit
//! with systemd-analyze and purges it without leftovers.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    cross::{self, Target},
    util::{ensure_apt, exec, output},
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Debian packages the package test needs (dpkg-deb is part of dpkg): systemd-analyze, setpriv.
pub const PACKAGES: &[&str] = &["systemd", "util-linux"];
/// The systemd unit shipped in the package (and linked from the README).
pub const UNIT: &str = "deploy/systemd/pidfd-trace.service";
const UNIT_DEST: &str = "lib/systemd/system/pidfd-trace.service";

/// `--arch` and `--test`, as for `cargo xtask image`.
pub type Options = crate::cross::ArchOptions;

/// `cargo xtask deb`: one package per architecture in target/debian/.
pub fn run(opts: &Options, root: &Path) -> Result<()> {
    if opts.test {
        return test(root);
    }
    for arch in &opts.arch {
        let t = cross::by_deb_arch(arch)?;
        let bins = cross::build(root, t.triple)?;
        let deb = build(root, t, &bins.agent)?;
        let size = std::fs::metadata(&deb)?.len();
        println!("deb: {} ({size} bytes)", deb.display());
    }
    Ok(())
}

const DEFAULT_ENV: &str = "\
# Options for `pidfd-trace serve` (see `pidfd-trace serve --help`), read by
# pidfd-trace.service; the unit already passes --log-format json. Restart the service after
# editing: systemctl restart pidfd-trace
#
# Events go to /var/log/pidfd-trace (the unit's LogsDirectory, the only place the service may
# write), rotated by /etc/logrotate.d/pidfd-trace. Drop --events-log to only count events.
PIDFD_TRACE_OPTS=\"--web.listen-address :29100 --events-log /var/log/pidfd-trace/events.jsonl\"
";

const LOGROTATE: &str = "\
# Rename, then SIGHUP (the unit's ExecReload): the agent reopens its events log and goes on.
/var/log/pidfd-trace/*.jsonl {
    daily
    maxsize 200M
    rotate 7
    compress
    delaycompress
    missingok
    notifempty
    sharedscripts
    postrotate
        systemctl reload pidfd-trace.service >/dev/null 2>&1 || true
    endscript
}
";

const POSTINST: &str = "\
#!/bin/sh
set -e
# Not enabled or started here: `systemctl enable --now pidfd-trace` once
# /etc/default/pidfd-trace says what you want.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
";

const PRERM: &str = "\
#!/bin/sh
set -e
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now pidfd-trace.service >/dev/null 2>&1 || true
fi
";

const POSTRM: &str = "\
#!/bin/sh
set -e
if [ \"$1\" = purge ]; then
    rm -rf /var/log/pidfd-trace
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge pidfd-trace.service >/dev/null || true
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
";

fn put(stage: &Path, rel: &str, content: &[u8], mode: u32) -> Result<()> {
    let path = stage.join(rel);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Builds target/debian/pidfd-trace_<version>_<arch>.deb around the static `agent`.
pub fn build(root: &Path, t: &Target, agent: &Path) -> Result<PathBuf> {
    ensure_apt(PACKAGES)?;
    let agent = &cross::stripped(agent, t)?;
    let out = root.join("target/debian");
    let stage = out.join(format!("stage-{}", t.deb_arch));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let read = |rel: &str| std::fs::read(root.join(rel)).with_context(|| format!("reading {rel}"));
    put(&stage, "usr/bin/pidfd-trace", &std::fs::read(agent)?, 0o755)?;
    put(&stage, UNIT_DEST, &read(UNIT)?, 0o644)?;
    put(&stage, "etc/default/pidfd-trace", DEFAULT_ENV.as_bytes(), 0o644)?;
    put(&stage, "etc/logrotate.d/pidfd-trace", LOGROTATE.as_bytes(), 0o644)?;
    put(
        &stage,
        "usr/share/pidfd-trace/dashboards/pidfd-trace.json",
        &read("dashboards/pidfd-trace.json")?,
        0o644,
    )?;
    if root.join(crate::kube::RULES).is_file() {
        put(
            &stage,
            "usr/share/pidfd-trace/prometheus/pidfd-trace.rules.yml",
            &read(crate::kube::RULES)?,
            0o644,
        )?;
    }
    put(&stage, "usr/share/doc/pidfd-trace/README.md", &read("README.md")?, 0o644)?;
    let copyright = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: pidfd-trace\n\nFiles: *\nLicense: {}\n",
        env!("CARGO_PKG_LICENSE")
    );
    put(&stage, "usr/share/doc/pidfd-trace/copyright", copyright.as_bytes(), 0o644)?;
    let installed_kib = dir_size(&stage)?.div_ceil(1024);
    let control = format!(
        "Package: pidfd-trace\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: pidfd-trace maintainers <root@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: eBPF agent watching how processes create and use pid file descriptors\n \
         pidfd-trace traces clone()/clone3() with CLONE_PIDFD, pidfd_open, pidfd_send_signal\n \
         and pidfd_getfd, failures included, and serves Prometheus metrics and a JSON-lines\n \
         event log. A static binary with its kernel programs embedded, a hardened systemd\n \
         unit (not enabled on install), a Grafana dashboard and Prometheus rules.\n",
        arch = t.deb_arch
    );
    put(&stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(&stage, "DEBIAN/conffiles", b"/etc/default/pidfd-trace\n/etc/logrotate.d/pidfd-trace\n", 0o644)?;
    put(&stage, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put(&stage, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put(&stage, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let deb = out.join(format!("pidfd-trace_{VERSION}_{}.deb", t.deb_arch));
    exec(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    Ok(deb)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { dir_size(&e.path())? } else { m.len() };
    }
    Ok(total)
}

/// dpkg with `args`, waiting (up to 3 minutes) while another dpkg/apt holds the lock.
fn dpkg(args: &[&str]) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("cannot run dpkg")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if stderr.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        bail!("dpkg {} failed: {}\n{stderr}", args.join(" "), out.status);
    }
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "pidfd-trace"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// The package test (root): install, run from the installed path, verify the installed unit,
/// purge, and check that nothing of the package is left.
pub fn test(root: &Path) -> Result<()> {
    ensure!(
        !installed(),
        "pidfd-trace is already installed on this machine and the package test would purge it: \
         remove it first (dpkg --purge pidfd-trace)"
    );
    let t = cross::host()?;
    let bins = cross::build(root, t.triple)?;
    let deb = build(root, t, &bins.agent)?;
    println!("deb: {} ({} bytes)", deb.display(), std::fs::metadata(&deb)?.len());
    dpkg(&["-i", &deb.to_string_lossy()])?;
    let result = (|| -> Result<()> {
        let files: Vec<PathBuf> =
            dpkg(&["-L", "pidfd-trace"])?.lines().map(PathBuf::from).filter(|p| p.is_file()).collect();
        ensure!(
            files.iter().any(|f| f == Path::new("/usr/bin/pidfd-trace")),
            "no /usr/bin/pidfd-trace installed"
        );
        // The installed binary, under the unit's capability bounding set and no_new_privs.
        let unit = std::fs::read_to_string(Path::new("/").join(UNIT_DEST))?;
        let caps = unit_caps(&unit)?;
        let bounding = format!(
            "-all,{}",
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
                .collect::<Vec<_>>()
                .join(",")
        );
        let check = output(
            Command::new("setpriv")
                .args(["--bounding-set", &bounding, "--inh-caps=-all", "--no-new-privs"])
                .args(["/usr/bin/pidfd-trace", "check"]),
        )
        .context("the installed pidfd-trace check, under the unit's capabilities")?;
        ensure!(check.contains("tracepoint"), "pidfd-trace check printed no attach plan:\n{check}");
        println!("deb: /usr/bin/pidfd-trace check ran with only {caps:?} (the unit's bounding set):");
        for l in check.lines().take(12) {
            println!("  {l}");
        }
        serve_as_the_unit(&unit, &bounding)?;
        verify_unit(&Path::new("/").join(UNIT_DEST))?;
        Ok(())
    })();
    let files: Vec<PathBuf> = dpkg(&["-L", "pidfd-trace"])
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    dpkg(&["--purge", "pidfd-trace"])?;
    result?;
    ensure!(!installed(), "pidfd-trace is still installed after dpkg --purge");
    let left: Vec<&PathBuf> = files.iter().filter(|f| f.exists()).collect();
    ensure!(left.is_empty(), "dpkg --purge left {left:?}");
    for p in [
        "/etc/default/pidfd-trace",
        "/var/log/pidfd-trace",
        "/usr/share/pidfd-trace",
        "/usr/share/doc/pidfd-trace",
    ] {
        ensure!(!Path::new(p).exists(), "dpkg --purge left {p}");
    }
    println!("deb: installed, ran, purged; none of its {} files is left", files.len());
    Ok(())
}

/// The installed unit's ExecStart with the installed /etc/default/pidfd-trace options (the
/// listen port swapped for a free loopback one), under the unit's bounding set and
/// no_new_privs: `serve` must answer /metrics, write its events log into the LogsDirectory
/// and exit 0 on SIGTERM.
fn serve_as_the_unit(unit: &str, bounding: &str) -> Result<()> {
    let exec_start = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .context("the unit has no ExecStart=")?;
    let env = std::fs::read_to_string("/etc/default/pidfd-trace")?;
    let opts = env
        .lines()
        .find_map(|l| l.trim().strip_prefix("PIDFD_TRACE_OPTS="))
        .context("/etc/default/pidfd-trace sets no PIDFD_TRACE_OPTS")?
        .trim_matches('"');
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let line = exec_start.replace("$PIDFD_TRACE_OPTS", opts).replace(":29100", &addr);
    let words: Vec<&str> = line.split_whitespace().collect();
    ensure!(words.first() == Some(&"/usr/bin/pidfd-trace"), "ExecStart does not run /usr/bin/pidfd-trace");
    // systemd creates the LogsDirectory; here the test does.
    std::fs::create_dir_all("/var/log/pidfd-trace")?;
    let mut child = Command::new("setpriv")
        .args(["--bounding-set", bounding, "--inh-caps=-all", "--no-new-privs"])
        .args(&words)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the installed pidfd-trace serve")?;
    let url = format!("http://{addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let answered = loop {
        if crate::util::succeeds(Command::new("curl").args(["-sf", "--max-time", "2", &url])) {
            break true;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    ensure!(answered, "{line}: /metrics never answered ({status})");
    ensure!(status.success(), "{line}: exited with {status} on SIGTERM");
    let log = Path::new("/var/log/pidfd-trace/events.jsonl");
    ensure!(log.is_file(), "{line}: wrote no {}", log.display());
    println!("deb: `{line}` served /metrics and stopped cleanly, under the same capabilities");
    Ok(())
}

/// The capabilities in the unit's CapabilityBoundingSet= line.
fn unit_caps(unit: &str) -> Result<Vec<String>> {
    let line = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .context("the unit has no CapabilityBoundingSet=")?;
    Ok(line.split_whitespace().map(str::to_string).collect())
}

/// `systemd-analyze verify` of the unit (its ExecStart binary must exist), and its
/// `systemd-analyze security` exposure score, which must stay below 4 ("OK" or better).
pub fn verify_unit(unit: &Path) -> Result<f64> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .stdin(Stdio::null())
        .output()
        .context("cannot run systemd-analyze")?;
    let msgs = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && msgs.trim().is_empty(),
        "systemd-analyze verify {}:\n{msgs}",
        unit.display()
    );
    println!("deb: systemd-analyze verify {}: clean", unit.display());
    // systemd is not PID 1 everywhere (CI containers): --offline reads the file alone.
    let sec =
        output(Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(unit))?;
    let line = sec
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .context("systemd-analyze security printed no exposure level")?;
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .context("cannot read the exposure score")?;
    println!("deb: systemd-analyze security --offline=yes: {}", line.trim());
    ensure!(score < 4.0, "the unit's exposure score {score} is worse than 4.0 (OK)");
    Ok(score)
}
