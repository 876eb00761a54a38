//! Boot one guest under TCG, stream its serial console to a log file, enforce a timeout.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::initramfs::{M_CHECK_END, M_DONE, M_INIT, M_SUITE_END};
use super::kernels::Arch;

pub struct Boot {
    /// Console lines (trailing CR/LF removed) with the seconds since qemu started.
    pub lines: Vec<(f64, String)>,
    pub timed_out: bool,
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub qemu_stderr: String,
}

/// Which machine to emulate for one guest.
pub struct Guest<'a> {
    /// "7.1/amd64": the prefix of progress lines.
    pub label: &'a str,
    pub arch: Arch,
    pub smp: u32,
}

/// The qemu command for `arch`: TCG on both (KVM hangs right after decompression here).
///
/// amd64: `-cpu max` with single-threaded TCG (`thread=single`: the guest keeps its `smp`
/// vCPUs, qemu runs them in turn on one host thread). With multi-threaded TCG (qemu 7.2,
/// Debian 12) x86 guests execute stale copies of kernel text that another vCPU has just
/// patched: Linux patches live code (static keys, ftrace, kprobes: what the agent's attach
/// does too) by writing an int3 first, and a vCPU that still runs that int3 after the patch
/// is complete dies with `Oops: int3` (x86 text_poke_bp's handler no longer knows it).
/// Measured 2026-12-01, 2 vCPUs: booting the 6.18 guest oopsed this way (RIP
/// `sched_clock_cpu+0x9`, the static key flipped at "sched_clock: Marking stable") in 1 of
/// 111 boots here and in a fresh-clone CI run; a guest flipping the `sched_schedstats` key in
/// a loop while both vCPUs schedule oopsed within 0-350 flips in 7 of 7 runs on 6.18 and in
/// the one run on each of 6.12, 6.17, 6.19 and 7.3, and hung on 5.10 and 6.1, while with
/// `thread=single` 5.10, 6.1, 6.12, 6.18 (2 runs) and 7.3 each did 511-944 flips in 40 s
/// without a fault. Cost: the whole 6.18 guest (three suite modes and `check`, one initramfs)
/// took 159.2 s with multi-threaded and 157.5 s with single-threaded TCG.
/// arm64 patches a single instruction in place, which the architecture allows while other CPUs
/// run it: the same loop did 997 flips on 7.3 with multi-threaded TCG, so arm64 keeps it.
/// arm64: the `virt` board with `-cpu max`; `pauth-impdef` swaps the architected pointer
/// authentication hash (QARMA, very slow to emulate) for qemu's own, which guests cannot tell.
fn qemu_command(g: &Guest) -> (Command, &'static str) {
    let (bin, console) = match g.arch {
        Arch::Amd64 => ("qemu-system-x86_64", "ttyS0"),
        Arch::Arm64 => ("qemu-system-aarch64", "ttyAMA0"),
    };
    let mut c = Command::new(bin);
    match g.arch {
        Arch::Amd64 => c.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
        Arch::Arm64 => c.args(["-machine", "virt", "-accel", "tcg", "-cpu", "max,pauth-impdef=on"]),
    };
    c.args(["-m", "1024", "-smp", &g.smp.to_string()]);
    (c, console)
}

pub fn boot(g: &Guest, vmlinuz: &Path, initrd: &Path, log: &Path, timeout: Duration) -> Result<Boot> {
    let mut log_file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let start = Instant::now();
    let (mut cmd, console) = qemu_command(g);
    let bin = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &format!("console={console} panic=-1 quiet")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot start {bin} (`cargo xtask setup` installs qemu-system-x86 and qemu-system-arm)")
        })?;

    let lines: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = {
        let lines = Arc::clone(&lines);
        let label = g.label.to_string();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let _ = log_file.write_all(&buf);
                let t = start.elapsed().as_secs_f64();
                let raw = String::from_utf8_lossy(&buf);
                let line = super::report::strip_ansi(raw.trim_end_matches(['\r', '\n']));
                progress(&label, t, &line);
                lines.lock().unwrap().push((t, line));
            }
            let _ = log_file.flush();
        })
    };
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = start.elapsed();
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();
    let lines = std::mem::take(&mut *lines.lock().unwrap());
    Ok(Boot { lines, timed_out, status, elapsed, qemu_stderr })
}

/// One short line on the terminal for the milestones, so a long run shows it is alive.
fn progress(label: &str, t: f64, line: &str) {
    let Some(pos) = line.find("=====PIDFD-") else { return };
    let m = &line[pos..];
    if m.starts_with(M_INIT) {
        println!(
            "vm [{label}] {t:6.1}s init started ({})",
            m.trim_matches('=').trim_start_matches("PIDFD-VM-INIT ")
        );
    } else if m.starts_with(M_SUITE_END) || m.starts_with(M_CHECK_END) || m.starts_with(M_DONE) {
        println!("vm [{label}] {t:6.1}s {}", m.trim_matches('=').trim_start_matches("PIDFD-"));
    }
}
