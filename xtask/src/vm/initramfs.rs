//! The guest's initramfs: busybox-static, the agent and workload (with every shared library
//! `ldd` reports, plus the dynamic loader) and a generated `/init`.

use anyhow::{Context, Result, anyhow, bail};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BUSYBOX: &str = "/bin/busybox";
pub const GUEST_AGENT: &str = "/bin/pidfd-trace";
pub const GUEST_WORKLOAD: &str = "/bin/pidfd-workload";

// Console markers. Everything the harness reads from the guest sits between these lines.
pub const M_INIT: &str = "=====PIDFD-VM-INIT";
pub const M_MOUNTS: &str = "=====PIDFD-VM-MOUNTS";
/// The first 32 bytes of /sys/kernel/btf/vmlinux in hex (its header; hdr_len grows on 7.2).
pub const M_BTF: &str = "=====PIDFD-VM-BTF";
pub const M_SUITE_BEGIN: &str = "=====PIDFD-SUITE-BEGIN";
pub const M_SUITE_END: &str = "=====PIDFD-SUITE-END";
pub const M_CHECK_BEGIN: &str = "=====PIDFD-CHECK-BEGIN";
pub const M_CHECK_END: &str = "=====PIDFD-CHECK-END";
pub const M_STDERR_BEGIN: &str = "=====PIDFD-STDERR-BEGIN";
pub const M_STDERR_END: &str = "=====PIDFD-STDERR-END";
pub const M_DONE: &str = "=====PIDFD-VM-DONE";
/// `/proc/sys/kernel/tainted` when /init started and before it ends; the kernel's `WARNING:`
/// lines follow it (the console is `quiet`, so they are not on it otherwise).
pub const M_TAINT: &str = "=====PIDFD-VM-TAINT";
pub const M_TAIL: &str = "=====";

pub struct Inputs<'a> {
    /// A static busybox for the guest's architecture (its applet list is read from the host's).
    pub busybox: &'a Path,
    pub agent: &'a Path,
    pub workload: &'a Path,
    pub modes: &'a [String],
    /// Seconds each suite run may take inside the guest before busybox `timeout` kills it.
    pub per_mode_timeout: u64,
    pub check_timeout: u64,
}

/// What the image is made of: every input file's path, size and mtime, and the `/init`
/// script; the image is reused while this stays the same.
fn fingerprint(inp: &Inputs) -> String {
    let mut key = init_script(inp);
    for f in [inp.busybox, inp.agent, inp.workload] {
        let meta = fs::metadata(f).ok();
        let mtime = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        key.push_str(&format!("\n{} {:?} {:?}", f.display(), meta.map(|m| m.len()), mtime));
    }
    key
}

/// Build `<out_dir>/initramfs.cpio.gz` (staging in `<out_dir>/initramfs/`), or reuse the one
/// built from the same inputs (`initramfs.key`); returns its path.
pub fn build(out_dir: &Path, inp: &Inputs) -> Result<PathBuf> {
    let out = out_dir.join("initramfs.cpio.gz");
    let key_file = out_dir.join("initramfs.key");
    let key = fingerprint(inp);
    if out.is_file() && fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok(out);
    }
    let _ = fs::remove_file(&key_file);
    let stage = out_dir.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "proc", "sys", "dev", "tmp", "root", "etc",
        "run", "var/tmp", "mnt",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::set_permissions(stage.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(stage.join("var/tmp"), fs::Permissions::from_mode(0o1777))?;

    // busybox and its applets
    install_file(inp.busybox, &stage, "bin/busybox")?;
    copy_libraries(inp.busybox, &stage)?;
    let list = Command::new(BUSYBOX).arg("--list-full").output().context("cannot run busybox --list-full")?;
    if !list.status.success() {
        bail!("busybox --list-full failed: is {BUSYBOX} from busybox-static?");
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" || applet == "init" || applet == "linuxrc" {
            continue;
        }
        let p = stage.join(applet);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        if !p.exists() {
            symlink("/bin/busybox", &p)?;
        }
    }

    // the binaries under test
    for (src, dst) in [(inp.agent, GUEST_AGENT), (inp.workload, GUEST_WORKLOAD)] {
        let rel = dst.trim_start_matches('/');
        let p = stage.join(rel);
        if p.exists() || p.is_symlink() {
            fs::remove_file(&p)?;
        }
        install_file(src, &stage, rel)?;
        copy_libraries(src, &stage)?;
    }

    fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(stage.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(stage.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
    let init = stage.join("init");
    fs::write(&init, init_script(inp))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let st = Command::new("bash")
        .arg("-c")
        .arg("set -euo pipefail; cd \"$1\"; find . -print | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 > \"$2\"")
        .arg("bash")
        .arg(&stage)
        .arg(&out)
        .status()
        .context("cannot run bash for the cpio | gzip pipeline")?;
    if !st.success() {
        bail!("building {} with cpio | gzip failed ({st})", out.display());
    }
    fs::write(&key_file, key).with_context(|| format!("cannot write {}", key_file.display()))?;
    Ok(out)
}

fn install_file(src: &Path, stage: &Path, rel: &str) -> Result<()> {
    let dst = stage.join(rel.trim_start_matches('/'));
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(src, &dst).with_context(|| format!("cannot copy {} into the initramfs", src.display()))?;
    let mode = fs::metadata(&dst)?.permissions().mode();
    fs::set_permissions(&dst, fs::Permissions::from_mode(mode | 0o555))?;
    Ok(())
}

/// Libraries (and the loader) `ldd` lists for `bin`, as absolute paths.
pub fn ldd_paths(ldd_output: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for line in ldd_output.lines() {
        let line = line.trim();
        if let Some((lib, rhs)) = line.split_once("=>") {
            let rhs = rhs.trim();
            if rhs.starts_with("not found") {
                bail!("shared library {} not found", lib.trim());
            }
            if let Some(p) = rhs.split_whitespace().next().filter(|p| p.starts_with('/')) {
                out.push(p.to_string());
            }
        } else if let Some(p) = line.split_whitespace().next().filter(|p| p.starts_with('/')) {
            out.push(p.to_string()); // the dynamic loader
        }
    }
    Ok(out)
}

fn copy_libraries(bin: &Path, stage: &Path) -> Result<()> {
    let out = Command::new("ldd").arg(bin).output().context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // static binaries and scripts: "not a dynamic executable" / "statically linked"
        return Ok(());
    }
    let libs = ldd_paths(&text).map_err(|e| anyhow!("{}: {e}", bin.display()))?;
    for lib in libs {
        let dst = stage.join(lib.trim_start_matches('/'));
        if !dst.exists() {
            install_file(Path::new(&lib), stage, &lib)?;
        }
    }
    Ok(())
}

fn init_script(inp: &Inputs) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        r#"#!/bin/sh
# Generated by `cargo xtask vm` (xtask/src/vm/initramfs.rs).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb RUST_BACKTRACE=1
mount -t proc proc /proc
st() {{ if "$@" >/dev/null 2>&1; then echo ok; else echo FAIL; fi; }}
M_SYSFS=$(st mount -t sysfs sysfs /sys)
M_DEV=$(st mount -t devtmpfs devtmpfs /dev)
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
echo "{M_INIT} kernel=$(uname -r){M_TAIL}"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
M_TRACE=$(st mount -t tracefs tracefs /sys/kernel/tracing)
M_DEBUG=$(st mount -t debugfs debugfs /sys/kernel/debug)
M_BPF=$(st mount -t bpf bpf /sys/fs/bpf)
M_CG2=$(st mount -t cgroup2 cgroup2 /sys/fs/cgroup)
PIDS=none
if [ "$M_CG2" = ok ] && grep -qw pids /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    echo +pids > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    PIDS=cgroup2
else
    # No pids controller in cgroup2: use the host's layout, cgroup2 at unified, v1 pids at pids.
    umount /sys/fs/cgroup 2>/dev/null
    mount -t tmpfs cgroup /sys/fs/cgroup
    mkdir -p /sys/fs/cgroup/unified /sys/fs/cgroup/pids
    M_CG2=$(st mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified)
    mount -t cgroup -o pids pids /sys/fs/cgroup/pids 2>/dev/null && PIDS=v1
fi
if [ -f /sys/kernel/btf/vmlinux ]; then BTF=yes; else BTF=no; fi
TAINT0=$(cat /proc/sys/kernel/tainted 2>/dev/null)
echo "{M_MOUNTS} sysfs=$M_SYSFS devtmpfs=$M_DEV tracefs=$M_TRACE debugfs=$M_DEBUG bpffs=$M_BPF cgroup2=$M_CG2 pids=$PIDS btf=$BTF{M_TAIL}"
echo "{M_BTF} hdr=$(od -An -tx1 -N32 /sys/kernel/btf/vmlinux 2>/dev/null | tr -d ' \n'){M_TAIL}"
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up 2>/dev/null
ulimit -l unlimited 2>/dev/null
hostname pidfd-vm
cd /tmp
# print a file, ending with a newline so the next marker starts its own line
show() {{ cat "$1" 2>/dev/null; if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then echo; fi; }}
"#
    ));
    for mode in inp.modes {
        s.push_str(&format!(
            r#"echo "{M_SUITE_BEGIN} mode={mode}{M_TAIL}"
PIDFD_WORKLOAD_GUEST=1 timeout -s KILL {t} {GUEST_WORKLOAD} suite --agent {GUEST_AGENT} --mode {mode} --json </dev/null >/tmp/suite.out 2>/tmp/suite.err
rc=$?
show /tmp/suite.out
echo "{M_SUITE_END} mode={mode} rc=$rc{M_TAIL}"
echo "{M_STDERR_BEGIN} what=suite-{mode}{M_TAIL}"
tail -n 300 /tmp/suite.err; if [ -s /tmp/suite.err ] && [ -n "$(tail -c 1 /tmp/suite.err)" ]; then echo; fi
echo "{M_STDERR_END}{M_TAIL}"
"#,
            t = inp.per_mode_timeout
        ));
    }
    s.push_str(&format!(
        r#"echo "{M_CHECK_BEGIN}{M_TAIL}"
timeout -s KILL {t} {GUEST_AGENT} check --output json </dev/null >/tmp/check.out 2>/tmp/check.err
rc=$?
show /tmp/check.out
echo "{M_CHECK_END} rc=$rc{M_TAIL}"
echo "{M_STDERR_BEGIN} what=check{M_TAIL}"
tail -n 100 /tmp/check.err; if [ -s /tmp/check.err ] && [ -n "$(tail -c 1 /tmp/check.err)" ]; then echo; fi
echo "{M_STDERR_END}{M_TAIL}"
echo "{M_TAINT} before=$TAINT0 after=$(cat /proc/sys/kernel/tainted 2>/dev/null){M_TAIL}"
dmesg 2>/dev/null | grep "WARNING:" | head -n 3
echo "{M_DONE}{M_TAIL}"
poweroff -f
sleep 10
echo o > /proc/sysrq-trigger
"#,
        t = inp.check_timeout
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_parsing() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(text).unwrap(),
            vec![
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(ldd_paths("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn init_has_every_mode() {
        let modes = vec!["fexit".to_string(), "kprobe".to_string()];
        let s = init_script(&Inputs {
            busybox: Path::new("/b"),
            agent: Path::new("/a"),
            workload: Path::new("/w"),
            modes: &modes,
            per_mode_timeout: 100,
            check_timeout: 60,
        });
        assert!(s.contains("--mode fexit --json"));
        assert!(s.contains("--mode kprobe --json"));
        assert!(s.contains("=====PIDFD-SUITE-END mode=kprobe rc=$rc====="));
        assert!(s.contains("check --output json"));
        assert!(s.trim_end().ends_with("echo o > /proc/sysrq-trigger"));
    }
}
