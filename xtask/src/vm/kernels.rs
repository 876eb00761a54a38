//! Host tools and Debian cloud kernels for the VM matrix.
//!
//! Kernels are fetched with apt-get from the machine's own Debian mirror (read at run time from
//! /etc/apt/sources.list.d/debian.sources, only the suite changed), using a private sources
//! file, lists directory and cache, so the machine's apt state is never touched.

use anyhow::{Context, Result, anyhow, bail};
use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A guest architecture: the Debian name, the qemu binary and how it is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Debian's name: `amd64`, `arm64`.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target the agent and workload are built for to run in this guest.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.deb())
    }
}

/// One kernel of the matrix: a Debian kernel series on one architecture. The package is the
/// newest `linux-image-<series>.<anything>-cloud-<arch>` found in `suites` at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// "5.10", "6.1", ..., "7.3": the series, used on the command line.
    pub series: &'static str,
    pub arch: Arch,
    /// Suites searched, all at once; the newest version among them wins.
    pub suites: &'static [&'static str],
}

/// The cloud flavour's packages: `linux-image-5.10.0-32-cloud-amd64` (bullseye, bookworm)
/// and `linux-image-6.12.57+deb13-cloud-amd64` (trixie and later).
impl KernelSpec {
    pub fn glob(&self) -> String {
        format!("linux-image-{}.*-cloud-{}", self.series, self.arch)
    }

    /// "7.1/amd64": the label in paths, logs and the table.
    pub fn id(&self) -> String {
        format!("{}/{}", self.series, self.arch)
    }

    fn matches(&self, name: &str) -> bool {
        let Some(mid) = name
            .strip_prefix("linux-image-")
            .and_then(|r| r.strip_suffix(&format!("-cloud-{}", self.arch)))
            .and_then(|r| r.strip_prefix(self.series))
            .and_then(|r| r.strip_prefix('.'))
        else {
            return false;
        };
        // "0-32" (5.10, 6.1) or "57+deb13" (6.12 and later); never a meta package or -dbg.
        let (num, tag) = mid.split_once('+').unwrap_or((mid, ""));
        let num_ok = !num.is_empty() && num.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-');
        let tag_ok = tag.is_empty()
            || tag
                .strip_prefix("deb")
                .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
        num_ok && tag_ok
    }
}

const BACKPORTS: &[&str] = &["trixie-backports", "sid"];

const fn k(series: &'static str, arch: Arch, suites: &'static [&'static str]) -> KernelSpec {
    KernelSpec { series, arch, suites }
}

/// Every kernel of the matrix, in table order. 6.16 is left out for 6.17 (same pidfs code).
pub const KERNELS: [KernelSpec; 14] = [
    k("5.10", Arch::Amd64, &["bullseye"]),
    k("6.1", Arch::Amd64, &["bookworm"]),
    k("6.12", Arch::Amd64, &["trixie"]),
    k("6.17", Arch::Amd64, BACKPORTS),
    k("6.18", Arch::Amd64, BACKPORTS),
    k("6.19", Arch::Amd64, BACKPORTS),
    k("7.0", Arch::Amd64, BACKPORTS),
    k("7.1", Arch::Amd64, BACKPORTS),
    k("7.2", Arch::Amd64, BACKPORTS),
    k("7.3", Arch::Amd64, BACKPORTS),
    k("6.1", Arch::Arm64, &["bookworm"]),
    k("6.12", Arch::Arm64, &["trixie"]),
    k("7.2", Arch::Arm64, BACKPORTS),
    k("7.3", Arch::Arm64, BACKPORTS),
];

#[cfg(test)]
pub fn spec(series: &str, arch: Arch) -> Option<KernelSpec> {
    KERNELS.iter().copied().find(|k| k.series == series && k.arch == arch)
}

const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
const LEGACY_SOURCES: &str = "/etc/apt/sources.list";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const HOST_PACKAGES: [&str; 4] = ["qemu-system-x86", "qemu-system-arm", "busybox-static", "cpio"];

/// A kernel in the cache.
#[derive(Debug, Clone)]
pub struct CachedKernel {
    pub spec: KernelSpec,
    pub vmlinuz: PathBuf,
    /// "package-name version", as recorded when it was downloaded.
    pub package: String,
}

/// `target/vm/kernels/<arch>/<series>/`: `vmlinuz` and `package`.
pub fn kernel_dir(root: &Path, spec: &KernelSpec) -> PathBuf {
    root.join("target/vm/kernels").join(spec.arch.deb()).join(spec.series)
}

fn cached(root: &Path, spec: &KernelSpec) -> Option<CachedKernel> {
    let dir = kernel_dir(root, spec);
    let vmlinuz = dir.join("vmlinuz");
    let meta = fs::metadata(&vmlinuz).ok()?;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    let package = fs::read_to_string(dir.join("package")).ok()?.trim().to_string();
    Some(CachedKernel { spec: *spec, vmlinuz, package })
}

// ---------------------------------------------------------------------------------------------
// Host packages

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Install qemu-system-x86, qemu-system-arm, busybox-static and cpio if missing (apt-get install -y, retried
/// after apt-get update), then check every tool the harness calls is present.
pub fn ensure_host_packages() -> Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("vm setup: host packages {} already installed", HOST_PACKAGES.join(", "));
    } else {
        println!("vm setup: installing host packages: {}", missing.join(" "));
        let mut args: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
        // Some images carry a newer qemu-utils (a backport) whose Breaks forbid the suite's
        // qemu-system-common: bring it to the version of the qemu about to be installed.
        if missing.iter().any(|p| p.starts_with("qemu-system")) && installed("qemu-utils") {
            let out = Command::new("apt-cache").args(["policy", "qemu-system-x86", "qemu-utils"]).output()?;
            let policy = parse_policy(&String::from_utf8_lossy(&out.stdout));
            let cand = |n: &str| policy.iter().find(|(p, _)| p == n).map(|(_, v)| v.clone());
            let have = Command::new("dpkg-query").args(["-W", "-f=${Version}", "qemu-utils"]).output()?;
            let have = String::from_utf8_lossy(&have.stdout).trim().to_string();
            if let Some(v) = cand("qemu-system-x86")
                && v != have
            {
                println!(
                    "vm setup: qemu-utils {have} conflicts with qemu-system-x86 {v}; installing qemu-utils {v}"
                );
                args.push(format!("qemu-utils={v}"));
            }
        }
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "--allow-downgrades"])
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(&args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
        };
        let ok = install().map(|s| s.success()).unwrap_or(false);
        if !ok {
            println!("vm setup: install failed; running apt-get update and retrying");
            let _ = Command::new("apt-get").args(["update", "-o", "DPkg::Lock::Timeout=600"]).status();
            let st = install().context("cannot run apt-get (is this a Debian host?)")?;
            if !st.success() {
                bail!("apt-get install {} failed ({st})", args.join(" "));
            }
        }
    }
    for (tool, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("cpio", "cpio"),
        ("gzip", "gzip"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
        ("ldd", "libc-bin"),
        ("bash", "bash"),
    ] {
        if !on_path(tool) {
            bail!("{tool} not found on PATH: install the Debian package {pkg}");
        }
    }
    if !Path::new(super::initramfs::BUSYBOX).is_file() {
        bail!("{} not found: install the Debian package busybox-static", super::initramfs::BUSYBOX);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mirror

/// Parse deb822 text into stanzas of (field, value) with continuation lines joined.
fn deb822_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim_end();
        if line.trim().is_empty() {
            if !cur.is_empty() {
                stanzas.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, v)) = cur.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        stanzas.push(cur);
    }
    stanzas
}

/// The URI of the (first enabled, `deb`) stanza whose Suites include exactly `bookworm`.
pub fn mirror_from_deb822(text: &str) -> Option<String> {
    for st in deb822_stanzas(text) {
        let field = |name: &str| st.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if field("enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !field("types").unwrap_or("deb").split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if !field("suites").unwrap_or("").split_whitespace().any(|s| s == "bookworm") {
            continue;
        }
        if let Some(uri) = field("uris").and_then(|u| u.split_whitespace().next()) {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// Fallback: a one-line `deb [opts] URI bookworm main` entry.
fn mirror_from_legacy(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            rest = rest.split_once(']').map(|(_, r)| r.trim_start()).unwrap_or("");
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some("bookworm")) = (words.next(), words.next()) {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

pub fn mirror_uri() -> Result<String> {
    if let Ok(text) = fs::read_to_string(DEBIAN_SOURCES)
        && let Some(uri) = mirror_from_deb822(&text)
    {
        return Ok(uri);
    }
    if let Ok(text) = fs::read_to_string(LEGACY_SOURCES)
        && let Some(uri) = mirror_from_legacy(&text)
    {
        return Ok(uri);
    }
    bail!("no Debian mirror found: {DEBIAN_SOURCES} has no `deb` stanza whose Suites include bookworm")
}

// ---------------------------------------------------------------------------------------------
// Private apt

struct PrivateApt {
    dir: PathBuf,
    archs: Vec<Arch>,
}

/// The private sources file, lists and cache are removed however the download ends.
impl Drop for PrivateApt {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl PrivateApt {
    fn new(dir: PathBuf, archs: Vec<Arch>) -> Result<Self> {
        let _ = fs::remove_dir_all(&dir);
        for sub in ["lists/partial", "cache/archives/partial", "download"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        Ok(PrivateApt { dir, archs })
    }

    fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            format!("-o=Dir::Etc::SourceList={d}/sources.list"),
            "-o=Dir::Etc::SourceParts=/dev/null".into(),
            format!("-o=Dir::State::Lists={d}/lists"),
            "-o=Dir::State::status=/dev/null".into(),
            format!("-o=Dir::Cache={d}/cache"),
            "-o=APT::Get::List-Cleanup=0".into(),
            "-o=APT::Sandbox::User=root".into(),
        ];
        o.extend(self.archs.iter().map(|a| format!("-o=APT::Architectures::={a}")));
        o
    }

    fn write_sources(&self, uri: &str, suites: &[(&str, bool)]) -> Result<()> {
        let mut text = String::new();
        for (suite, trusted) in suites {
            let opt = if *trusted { "trusted=yes".to_string() } else { format!("signed-by={KEYRING}") };
            text.push_str(&format!("deb [{opt}] {uri} {suite} main\n"));
        }
        fs::write(self.dir.join("sources.list"), text).context("cannot write private sources.list")
    }

    fn run(&self, tool: &str, args: &[&str], cwd: Option<&Path>) -> Result<(bool, String, String)> {
        let mut cmd = Command::new(tool);
        cmd.args(self.opts()).args(args).env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(c) = cwd {
            cmd.current_dir(c);
        }
        let out = cmd.output().with_context(|| format!("cannot run {tool}"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn has_index(&self, suite: &str) -> bool {
        let needle = format!("_dists_{suite}_main_binary-");
        fs::read_dir(self.dir.join("lists"))
            .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().contains(&needle)))
            .unwrap_or(false)
    }

    /// `apt-get update` for `suites`; a suite whose index did not arrive because of a
    /// signature problem gets one retry with trusted=yes. Returns the suites that have an
    /// index, and why the others have none.
    fn update(&self, uri: &str, names: &[&'static str]) -> Result<(Vec<&'static str>, String)> {
        let mut suites: Vec<(&str, bool)> = names.iter().map(|s| (*s, false)).collect();
        self.write_sources(uri, &suites)?;
        let (_, out, err) = self.run("apt-get", &["update"], None)?;
        let sig_problem =
            |t: &str| t.contains("NO_PUBKEY") || t.contains("not signed") || t.contains("GPG error");
        let mut why = last_error_line(&err, &out);
        let unsigned: Vec<&str> = names.iter().copied().filter(|s| !self.has_index(s)).collect();
        if !unsigned.is_empty() && (sig_problem(&err) || sig_problem(&out)) {
            eprintln!(
                "vm setup: WARNING: the Debian archive keyring does not verify {}; retrying with [trusted=yes] for it",
                unsigned.join(" ")
            );
            for s in suites.iter_mut() {
                if unsigned.contains(&s.0) {
                    s.1 = true;
                }
            }
            self.write_sources(uri, &suites)?;
            let (_, out2, err2) = self.run("apt-get", &["update"], None)?;
            why = last_error_line(&err2, &out2);
        }
        Ok((names.iter().copied().filter(|s| self.has_index(s)).collect(), why))
    }

    /// `apt-get download PKG` into a fresh directory, then `dpkg-deb -x`; the extracted tree.
    fn fetch_extract(&self, what: &str, pkg: &str) -> Result<PathBuf> {
        let dl = self.dir.join("download").join(what.replace('/', "-"));
        let _ = fs::remove_dir_all(&dl);
        fs::create_dir_all(&dl)?;
        let (ok, out, err) = self.run("apt-get", &["download", pkg], Some(&dl))?;
        if !ok {
            bail!("download failure: {what}: apt-get download {pkg}: {}", last_error_line(&err, &out));
        }
        let deb = fs::read_dir(&dl)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| anyhow!("download failure: {what}: apt-get download left no .deb"))?;
        // Only the files wanted (a kernel image package also holds every module: extracting
        // those took most of a download's time). tar exits non-zero when a pattern matches
        // nothing, which is the caller's to judge by what it finds.
        let x = dl.join("x");
        fs::create_dir_all(&x)?;
        let st = Command::new("bash")
            .arg("-c")
            .arg("set -o pipefail; dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards --no-wildcards-match-slash './boot/vmlinuz-*' './usr/lib/modules/*/vmlinuz' './bin/busybox' 2>/dev/null; rc=$?; [ $rc -le 2 ]")
            .arg("bash")
            .arg(&deb)
            .arg(&x)
            .status()
            .context("cannot run dpkg-deb | tar")?;
        if !st.success() {
            bail!("{what}: dpkg-deb --fsys-tarfile {} | tar -x failed", deb.display());
        }
        Ok(x)
    }
}

fn last_error_line(stderr: &str, stdout: &str) -> String {
    let all: Vec<&str> = stderr.lines().chain(stdout.lines()).map(str::trim).collect();
    let pick = |pred: &dyn Fn(&str) -> bool| all.iter().rev().find(|l| pred(l)).map(|l| l.to_string());
    pick(&|l| l.starts_with("E:") && !l.contains("Some index files failed"))
        .or_else(|| {
            pick(&|l| l.contains("Failed to fetch") || l.contains("Could not") || l.contains("NO_PUBKEY"))
        })
        .or_else(|| pick(&|l| l.starts_with("E:") || l.starts_with("W:") || l.starts_with("Err:")))
        .or_else(|| all.last().map(|l| l.to_string()))
        .unwrap_or_else(|| "no output".into())
}

/// What became of one requested kernel.
pub type Resolved = (KernelSpec, std::result::Result<CachedKernel, String>);

/// Resolve every kernel in `specs` to the newest package of its series (asking the archive
/// once per run; without an answer the cached one is used) and make sure it is in the cache.
/// A series the archive no longer carries is returned as an error string, not fatal; a
/// mirror that cannot be read at all, with nothing cached, is.
pub fn ensure_kernels(root: &Path, specs: &[KernelSpec]) -> Result<Vec<Resolved>> {
    let mut archs: Vec<Arch> = specs.iter().map(|s| s.arch).collect();
    archs.sort();
    archs.dedup();
    let mut names: Vec<&'static str> = specs.iter().flat_map(|s| s.suites.iter().copied()).collect();
    names.sort();
    names.dedup();
    let apt = PrivateApt::new(root.join("target/vm/apt-tmp"), archs)?;
    let uri = mirror_uri()?;
    println!(
        "vm setup: apt-get update (private state) for {} [{}]",
        names.join(" "),
        apt.archs.iter().map(|a| a.deb()).collect::<Vec<_>>().join(",")
    );
    let (indexed, why) = apt.update(&uri, &names)?;
    let all = candidates(&apt, &apt.archs).unwrap_or_else(|e| {
        eprintln!("vm setup: cannot list the archive's kernels: {e:#}");
        Vec::new()
    });
    let mut out = Vec::new();
    for spec in specs {
        let old = cached(root, spec);
        let present: Vec<&str> = spec.suites.iter().copied().filter(|s| indexed.contains(s)).collect();
        let newest = if present.is_empty() {
            Err(format!("suite(s) {} unreadable: {why}", spec.suites.join(" ")))
        } else {
            newest_package(&all, spec).map_err(|e| format!("{e:#}"))
        };
        let r = match (newest, old) {
            (Ok((name, version)), Some(old)) if old.package == format!("{name} {version}") => Ok(old),
            (Ok((name, version)), old) => match download(root, &apt, spec, &name, &version) {
                Ok(k) => Ok(k),
                Err(e) => match old {
                    Some(old) => {
                        eprintln!("vm setup: kernel {}: {e:#}; using the cached {}", spec.id(), old.package);
                        Ok(old)
                    }
                    None => Err(format!("{e:#}")),
                },
            },
            (Err(e), Some(old)) => {
                eprintln!("vm setup: kernel {}: {e}; using the cached {}", spec.id(), old.package);
                Ok(old)
            }
            (Err(e), None) => {
                eprintln!("vm setup: kernel {}: not available: {e}", spec.id());
                Err(e)
            }
        };
        out.push((*spec, r));
    }
    if out.iter().all(|(_, r)| r.is_err()) && !out.is_empty() {
        bail!("download failure: no kernel could be had from the mirror {uri}: {why}");
    }
    Ok(out)
}

/// Print the cache state of one kernel (for `setup`).
pub fn describe(k: &CachedKernel, root: &Path) -> String {
    let rel = k.vmlinuz.strip_prefix(root).unwrap_or(&k.vmlinuz);
    format!("kernel {:<11} {} ({})", k.spec.id(), rel.display(), k.package)
}

fn download(
    root: &Path,
    apt: &PrivateApt,
    spec: &KernelSpec,
    name: &str,
    version: &str,
) -> Result<CachedKernel> {
    println!("vm setup: kernel {}: downloading {name} {version}", spec.id());
    let x = apt.fetch_extract(&spec.id(), &format!("{name}:{}={version}", spec.arch))?;
    let vmlinuz = match find_vmlinuz(&x) {
        Some(v) => v,
        None => {
            // 6.19 and later: linux-image-* is a meta package; the image is in the
            // linux-binary-<abi> package it depends on (same version).
            let binary = name.replacen("linux-image-", "linux-binary-", 1);
            println!("vm setup: kernel {}: the image is in {binary}; downloading it", spec.id());
            let x = apt.fetch_extract(
                &format!("{}-binary", spec.id()),
                &format!("{binary}:{}={version}", spec.arch),
            )?;
            find_vmlinuz(&x).ok_or_else(|| {
                anyhow!(
                    "kernel {}: neither {name} nor {binary} has boot/vmlinuz-* or usr/lib/modules/*/vmlinuz",
                    spec.id()
                )
            })?
        }
    };
    let dir = kernel_dir(root, spec);
    fs::create_dir_all(&dir)?;
    let tmp = dir.join("vmlinuz.tmp");
    fs::copy(&vmlinuz, &tmp).with_context(|| format!("cannot copy {}", vmlinuz.display()))?;
    fs::write(dir.join("package"), format!("{name} {version}\n"))?;
    fs::rename(&tmp, dir.join("vmlinuz"))?;
    println!(
        "vm setup: kernel {}: cached {} ({} bytes)",
        spec.id(),
        dir.join("vmlinuz").strip_prefix(root).unwrap_or(&dir).display(),
        fs::metadata(dir.join("vmlinuz"))?.len()
    );
    cached(root, spec).ok_or_else(|| anyhow!("kernel {}: not in the cache after download", spec.id()))
}

/// `boot/vmlinuz-*` (up to 6.18) or `usr/lib/modules/<abi>/vmlinuz` (6.19 and later).
fn find_vmlinuz(tree: &Path) -> Option<PathBuf> {
    let in_boot = fs::read_dir(tree.join("boot")).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
    });
    in_boot.or_else(|| {
        fs::read_dir(tree.join("usr/lib/modules"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("vmlinuz"))
            .find(|p| p.is_file())
    })
}

/// A static busybox for `arch` (the host's own for amd64; Debian's busybox-static:arm64 from
/// the host's suite, fetched once into `target/vm/busybox/<arch>` for the others).
pub fn busybox(root: &Path, arch: Arch) -> Result<PathBuf> {
    if arch == Arch::Amd64 {
        return Ok(PathBuf::from(super::initramfs::BUSYBOX));
    }
    let dst = root.join("target/vm/busybox").join(arch.deb()).join("busybox");
    if dst.is_file() {
        return Ok(dst);
    }
    let apt = PrivateApt::new(root.join("target/vm/apt-tmp-busybox"), vec![arch])?;
    let uri = mirror_uri()?;
    let (indexed, why) = apt.update(&uri, &["bookworm"])?;
    if indexed.is_empty() {
        bail!("download failure: busybox-static:{arch}: apt-get update for bookworm failed: {why}");
    }
    let x = apt.fetch_extract("busybox", &format!("busybox-static:{arch}"))?;
    let src = x.join("bin/busybox");
    fs::create_dir_all(dst.parent().expect("has a parent"))?;
    fs::copy(&src, &dst).with_context(|| format!("busybox-static:{arch} has no {}", src.display()))?;
    Ok(dst)
}

/// Every cloud kernel package the private lists know for `archs`, with its candidate version:
/// one `apt-cache search` and one `apt-cache policy` (each reads all the lists, seconds apiece).
fn candidates(apt: &PrivateApt, archs: &[Arch]) -> Result<Vec<(String, Arch, String)>> {
    let alt: Vec<&str> = archs.iter().map(|a| a.deb()).collect();
    let regex = format!("^linux-image-[0-9].*-cloud-({})$", alt.join("|"));
    let (ok, out, err) = apt.run("apt-cache", &["search", "--names-only", &regex], None)?;
    if !ok {
        bail!("apt-cache search failed: {}", last_error_line(&err, &out));
    }
    let mut names: Vec<(String, Arch)> = Vec::new();
    for n in out.lines().filter_map(|l| l.split_whitespace().next()) {
        if let Some(a) = archs.iter().copied().find(|a| n.ends_with(&format!("-cloud-{a}"))) {
            names.push((n.to_string(), a));
        }
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["policy".to_string()];
    args.extend(names.iter().map(|(n, a)| format!("{n}:{a}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = apt.run("apt-cache", &args, None)?;
    if !ok {
        bail!("apt-cache policy failed: {}", last_error_line(&err, &out));
    }
    Ok(parse_policy(&out)
        .into_iter()
        .filter_map(|(n, v)| {
            let name = n.split(':').next().unwrap_or_default().to_string();
            let arch = names.iter().find(|(m, _)| *m == name).map(|(_, a)| *a)?;
            Some((name, arch, v))
        })
        .collect())
}

/// Newest (by candidate version) package of the spec's series among `all`.
fn newest_package(all: &[(String, Arch, String)], spec: &KernelSpec) -> Result<(String, String)> {
    all.iter()
        .filter(|(n, a, _)| *a == spec.arch && spec.matches(n))
        .max_by(|a, b| deb_version_cmp(&a.2, &b.2).then_with(|| a.0.cmp(&b.0)))
        .map(|(n, _, v)| (n.clone(), v.clone()))
        .ok_or_else(|| {
            anyhow!("no matching kernel package: nothing named {} in {}", spec.glob(), spec.suites.join(" "))
        })
}

/// (package, candidate version) pairs from `apt-cache policy` output.
fn parse_policy(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && line.trim_end().ends_with(':') {
            name = Some(line.trim_end().trim_end_matches(':').to_string());
        } else if let Some(c) = line.trim().strip_prefix("Candidate:") {
            let c = c.trim();
            if let Some(n) = name.take()
                && c != "(none)"
            {
                out.push((n, c.to_string()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Debian version ordering (dpkg's algorithm)

fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> i32 {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0usize, 0usize);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac - bc;
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = 0i32;
        while digit(a, i) && digit(b, j) {
            if first_diff == 0 {
                first_diff = a[i] as i32 - b[j] as i32;
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return 1;
        }
        if digit(b, j) {
            return -1;
        }
        if first_diff != 0 {
            return first_diff;
        }
    }
    0
}

pub fn deb_version_cmp(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| verrevcmp(ua, ub).cmp(&0)).then_with(|| verrevcmp(ra, rb).cmp(&0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(deb_version_cmp("6.12.117-1", "6.12.107-1"), Ordering::Greater);
        assert_eq!(deb_version_cmp("5.10.223-1", "5.10.226-1"), Ordering::Less);
        assert_eq!(deb_version_cmp("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(deb_version_cmp("1:1.0", "2.0"), Ordering::Greater);
        assert_eq!(deb_version_cmp("6.1.158-1", "6.1.158-1"), Ordering::Equal);
        assert_eq!(deb_version_cmp("6.1.20-2", "6.1.20-10"), Ordering::Less);
        assert_eq!(deb_version_cmp("1.0a", "1.0"), Ordering::Greater);
    }

    #[test]
    fn package_matching() {
        let k510 = spec("5.10", Arch::Amd64).unwrap();
        assert!(k510.matches("linux-image-5.10.0-32-cloud-amd64"));
        assert!(!k510.matches("linux-image-5.10.0-32-cloud-amd64-unsigned"));
        assert!(!k510.matches("linux-image-5.10.0-32-cloud-amd64-dbg"));
        assert!(!k510.matches("linux-image-5.10.0-32-cloud-arm64"));
        assert!(!k510.matches("linux-image-cloud-amd64"));
        let k612 = spec("6.12", Arch::Amd64).unwrap();
        assert!(k612.matches("linux-image-6.12.117+deb13-cloud-amd64"));
        assert!(!k612.matches("linux-image-6.12.117+deb13-cloud-amd64-dbg"));
        assert!(!k612.matches("linux-image-6.12.117+deb13-rt-amd64"));
        let k73 = spec("7.3", Arch::Arm64).unwrap();
        assert!(k73.matches("linux-image-7.3.4+deb13-cloud-arm64"));
        assert!(k73.matches("linux-image-7.3.11+deb14-cloud-arm64"));
        assert!(!k73.matches("linux-image-7.3-cloud-arm64"), "experimental's meta package");
        assert!(!k73.matches("linux-image-7.3.4+deb13-cloud-amd64"));
        assert!(!spec("7.1", Arch::Amd64).unwrap().matches("linux-image-7.10.2+deb13-cloud-amd64"));
    }

    #[test]
    fn newest_of_a_series() {
        let row = |n: &str, a, v: &str| (n.to_string(), a, v.to_string());
        let all = vec![
            row("linux-image-7.2.12+deb13-cloud-amd64", Arch::Amd64, "7.2.12-1~bpo13+1"),
            row("linux-image-7.2.13+deb14-cloud-amd64", Arch::Amd64, "7.2.13-1"),
            row("linux-image-7.2.9+deb13-cloud-amd64", Arch::Amd64, "7.2.9-1~bpo13+1"),
            row("linux-image-7.2.14+deb14-cloud-arm64", Arch::Arm64, "7.2.14-1"),
            row("linux-image-7.3-cloud-amd64", Arch::Amd64, "7.3~rc7-1~exp1"),
        ];
        let newest = |series, arch| newest_package(&all, &spec(series, arch).unwrap()).map(|(n, _)| n);
        assert_eq!(newest("7.2", Arch::Amd64).unwrap(), "linux-image-7.2.13+deb14-cloud-amd64");
        assert_eq!(newest("7.2", Arch::Arm64).unwrap(), "linux-image-7.2.14+deb14-cloud-arm64");
        let gone = newest("7.3", Arch::Amd64).unwrap_err().to_string();
        assert!(gone.contains("nothing named linux-image-7.3.*-cloud-amd64"), "{gone}");
    }

    #[test]
    fn deb822_mirror() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(mirror_from_deb822(text).as_deref(), Some("http://mirror.example/debian"));
        let sec_only = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(mirror_from_deb822(sec_only), None);
        assert_eq!(
            mirror_from_legacy("deb [arch=amd64] http://m.example/debian/ bookworm main\n").as_deref(),
            Some("http://m.example/debian")
        );
    }

    #[test]
    fn policy() {
        let text = "linux-image-5.10.0-30-cloud-amd64:\n  Installed: (none)\n  Candidate: 5.10.218-1\n  Version table:\n     5.10.218-1 500\nlinux-image-5.10.0-32-cloud-amd64:\n  Installed: (none)\n  Candidate: 5.10.223-1\n";
        let p = parse_policy(text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1], ("linux-image-5.10.0-32-cloud-amd64".into(), "5.10.223-1".into()));
    }
}
