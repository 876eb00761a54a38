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

/// One kernel of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec {
    /// Short name used on the command line and in paths: "5.10", "6.1", "6.12".
    pub version: &'static str,
    pub suite: &'static str,
    /// Package name = prefix + ABI (digits and dots) + suffix.
    pub prefix: &'static str,
    pub suffix: &'static str,
}

impl KernelSpec {
    pub fn glob(&self) -> String {
        format!("{}*{}", self.prefix, self.suffix)
    }

    fn matches(&self, name: &str) -> bool {
        let Some(mid) = name.strip_prefix(self.prefix).and_then(|r| r.strip_suffix(self.suffix)) else {
            return false;
        };
        !mid.is_empty() && mid.chars().all(|c| c.is_ascii_digit() || c == '.')
    }

    fn search_regex(&self) -> String {
        format!("^{}.*{}$", regex_escape(self.prefix), regex_escape(self.suffix))
    }
}

pub const KERNELS: [KernelSpec; 3] = [
    KernelSpec { version: "5.10", suite: "bullseye", prefix: "linux-image-5.10.0-", suffix: "-cloud-amd64" },
    KernelSpec { version: "6.1", suite: "bookworm", prefix: "linux-image-6.1.0-", suffix: "-cloud-amd64" },
    KernelSpec {
        version: "6.12",
        suite: "trixie",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-cloud-amd64",
    },
];

pub fn spec(version: &str) -> Option<KernelSpec> {
    KERNELS.iter().copied().find(|k| k.version == version)
}

const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
const LEGACY_SOURCES: &str = "/etc/apt/sources.list";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const HOST_PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "cpio"];

/// A kernel in the cache.
#[derive(Debug, Clone)]
pub struct CachedKernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    /// "package-name version", as recorded when it was downloaded.
    pub package: String,
}

pub fn kernel_dir(root: &Path, version: &str) -> PathBuf {
    root.join("target/vm/kernels").join(version)
}

fn cached(root: &Path, version: &str) -> Option<CachedKernel> {
    let dir = kernel_dir(root, version);
    let vmlinuz = dir.join("vmlinuz");
    let meta = fs::metadata(&vmlinuz).ok()?;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    let package = fs::read_to_string(dir.join("package"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown package)".into());
    Some(CachedKernel { version: version.to_string(), vmlinuz, package })
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

/// Install qemu-system-x86, busybox-static and cpio if missing (apt-get install -y, retried
/// after apt-get update), then check every tool the harness calls is present.
pub fn ensure_host_packages() -> Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("vm setup: host packages {} already installed", HOST_PACKAGES.join(", "));
    } else {
        println!("vm setup: installing host packages: {}", missing.join(" "));
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
        };
        let ok = install().map(|s| s.success()).unwrap_or(false);
        if !ok {
            println!("vm setup: install failed; running apt-get update and retrying");
            let _ = Command::new("apt-get").arg("update").status();
            let st = install().context("cannot run apt-get (is this a Debian host?)")?;
            if !st.success() {
                bail!("apt-get install {} failed ({st})", missing.join(" "));
            }
        }
    }
    for (tool, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
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
}

/// The private sources file, lists and cache are removed however the download ends.
impl Drop for PrivateApt {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl PrivateApt {
    fn new(dir: PathBuf) -> Result<Self> {
        let _ = fs::remove_dir_all(&dir);
        for sub in ["lists/partial", "cache/archives/partial", "download"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        Ok(PrivateApt { dir })
    }

    fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-o=Dir::Etc::SourceList={d}/sources.list"),
            "-o=Dir::Etc::SourceParts=/dev/null".into(),
            format!("-o=Dir::State::Lists={d}/lists"),
            "-o=Dir::State::status=/dev/null".into(),
            format!("-o=Dir::Cache={d}/cache"),
            "-o=APT::Get::List-Cleanup=0".into(),
            "-o=APT::Sandbox::User=root".into(),
        ]
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
        let needle = format!("_dists_{suite}_main_binary-amd64_Packages");
        fs::read_dir(self.dir.join("lists"))
            .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().contains(&needle)))
            .unwrap_or(false)
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

/// Make sure every kernel in `versions` is in the cache; download the missing ones.
pub fn ensure_kernels(root: &Path, versions: &[&str]) -> Result<Vec<CachedKernel>> {
    let mut missing = Vec::new();
    for v in versions {
        let spec = spec(v).ok_or_else(|| anyhow!("unknown kernel '{v}' (known: 5.10, 6.1, 6.12)"))?;
        if cached(root, v).is_none() {
            missing.push(spec);
        }
    }
    if !missing.is_empty() {
        download(root, &missing)?;
    }
    let mut out = Vec::new();
    for v in versions {
        let k = cached(root, v).ok_or_else(|| anyhow!("kernel {v}: not in the cache after download"))?;
        out.push(k);
    }
    Ok(out)
}

/// Print the cache state of one kernel (for `setup`).
pub fn describe(k: &CachedKernel, root: &Path) -> String {
    let rel = k.vmlinuz.strip_prefix(root).unwrap_or(&k.vmlinuz);
    format!("kernel {:<4} {} ({})", k.version, rel.display(), k.package)
}

pub fn is_cached(root: &Path, version: &str) -> bool {
    cached(root, version).is_some()
}

fn download(root: &Path, specs: &[KernelSpec]) -> Result<()> {
    let uri = mirror_uri()?;
    let apt = PrivateApt::new(root.join("target/vm/apt-tmp"))?;
    let mut suites: Vec<(&str, bool)> = specs.iter().map(|s| (s.suite, false)).collect();
    suites.dedup();
    let names: Vec<&str> = suites.iter().map(|s| s.0).collect();
    println!("vm setup: apt-get update (private state) for {}", names.join(" "));
    apt.write_sources(&uri, &suites)?;
    let (ok, out, err) = apt.run("apt-get", &["update"], None)?;
    // A suite whose index did not arrive because of a signature problem gets one retry
    // with trusted=yes; anything else is an error.
    let sig_problem =
        |t: &str| t.contains("NO_PUBKEY") || t.contains("not signed") || t.contains("GPG error");
    let unsigned: Vec<&str> = names.iter().copied().filter(|s| !apt.has_index(s)).collect();
    if !unsigned.is_empty() {
        if sig_problem(&err) || sig_problem(&out) {
            eprintln!(
                "vm setup: WARNING: the Debian archive keyring does not verify {}; retrying with [trusted=yes] for it",
                unsigned.join(" ")
            );
            for s in suites.iter_mut() {
                if unsigned.contains(&s.0) {
                    s.1 = true;
                }
            }
            apt.write_sources(&uri, &suites)?;
            let (_, out2, err2) = apt.run("apt-get", &["update"], None)?;
            if let Some(s) = names.iter().find(|s| !apt.has_index(s)) {
                bail!(
                    "download failure: apt-get update for suite {s} failed: {}",
                    last_error_line(&err2, &out2)
                );
            }
        } else {
            bail!(
                "download failure: apt-get update for suite(s) {} failed{}: {}",
                unsigned.join(" "),
                if ok { "" } else { " (non-zero exit)" },
                last_error_line(&err, &out)
            );
        }
    }

    for spec in specs {
        let (name, version) = newest_package(&apt, spec)?;
        println!("vm setup: kernel {}: downloading {name} {version} from {}", spec.version, spec.suite);
        let dl = apt.dir.join("download").join(spec.version);
        fs::create_dir_all(&dl)?;
        let pkg = format!("{name}={version}");
        let (ok, out, err) = apt.run("apt-get", &["download", &pkg], Some(&dl))?;
        if !ok {
            bail!(
                "download failure: kernel {}: apt-get download {pkg}: {}",
                spec.version,
                last_error_line(&err, &out)
            );
        }
        let deb = fs::read_dir(&dl)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| {
                anyhow!("download failure: kernel {}: apt-get download left no .deb", spec.version)
            })?;
        let x = dl.join("x");
        let st =
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x).status().context("cannot run dpkg-deb")?;
        if !st.success() {
            bail!("kernel {}: dpkg-deb -x {} failed", spec.version, deb.display());
        }
        let vmlinuz = fs::read_dir(x.join("boot"))
            .with_context(|| format!("kernel {}: package {name} has no boot/ directory", spec.version))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            .ok_or_else(|| anyhow!("kernel {}: package {name} has no boot/vmlinuz-*", spec.version))?;
        let dir = kernel_dir(root, spec.version);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join("vmlinuz.tmp");
        fs::copy(&vmlinuz, &tmp).with_context(|| format!("cannot copy {}", vmlinuz.display()))?;
        fs::write(dir.join("package"), format!("{name} {version}\n"))?;
        fs::rename(&tmp, dir.join("vmlinuz"))?;
        println!(
            "vm setup: kernel {}: cached {} ({} bytes)",
            spec.version,
            dir.join("vmlinuz").strip_prefix(root).unwrap_or(&dir).display(),
            fs::metadata(dir.join("vmlinuz"))?.len()
        );
    }
    Ok(())
}

/// Newest (by candidate version) package of the suite matching the spec's glob.
fn newest_package(apt: &PrivateApt, spec: &KernelSpec) -> Result<(String, String)> {
    let (ok, out, err) = apt.run("apt-cache", &["search", "--names-only", &spec.search_regex()], None)?;
    if !ok {
        bail!("apt-cache search failed: {}", last_error_line(&err, &out));
    }
    let names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| spec.matches(n))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        bail!("no matching kernel package: nothing named {} in {}", spec.glob(), spec.suite);
    }
    let mut args = vec!["policy"];
    args.extend(names.iter().map(String::as_str));
    let (ok, out, err) = apt.run("apt-cache", &args, None)?;
    if !ok {
        bail!("apt-cache policy failed: {}", last_error_line(&err, &out));
    }
    let candidates = parse_policy(&out);
    candidates
        .into_iter()
        .filter(|(n, _)| spec.matches(n))
        .max_by(|a, b| deb_version_cmp(&a.1, &b.1).then_with(|| a.0.cmp(&b.0)))
        .ok_or_else(|| {
            anyhow!(
                "no matching kernel package: no installable candidate for {} in {}",
                spec.glob(),
                spec.suite
            )
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

fn regex_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if ".+*?()[]{}|^$\\".contains(c) {
            o.push('\\');
        }
        o.push(c);
    }
    o
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
        let k510 = spec("5.10").unwrap();
        assert!(k510.matches("linux-image-5.10.0-32-cloud-amd64"));
        assert!(!k510.matches("linux-image-5.10.0-32-cloud-amd64-unsigned"));
        assert!(!k510.matches("linux-image-5.10.0-32-cloud-amd64-dbg"));
        assert!(!k510.matches("linux-image-cloud-amd64"));
        let k612 = spec("6.12").unwrap();
        assert!(k612.matches("linux-image-6.12.117+deb13-cloud-amd64"));
        assert!(!k612.matches("linux-image-6.12.117+deb13-cloud-amd64-dbg"));
        assert!(!k612.matches("linux-image-6.12.117+deb13-rt-amd64"));
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
