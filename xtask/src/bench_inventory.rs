//! `cargo xtask bench-inventory`: what one open-pidfd inventory scan costs on a big host.
//! Makes the host (`pidfd-workload fd-host`: PROCS processes holding FDS fds each, one of them
//! a pidfd), then measures `pidfd-trace ls` (CPU from the kernel's rusage of the child, wall
//! time) and one `serve` refresh at the default interval (from its own
//! `pidfd_trace_inventory_*` metrics). Reports figures; asserts no time.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::util;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Processes on the made host.
    #[arg(long, default_value_t = 10_000)]
    pub procs: u32,
    /// Fds each of them holds (one is a pidfd).
    #[arg(long, default_value_t = 10)]
    pub fds: u32,
    /// `ls` runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

fn children_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a local rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn run(opts: &Options, bins: &crate::Binaries) -> Result<()> {
    ensure!(util::is_root(), "bench-inventory needs root (it reads every process's fds and starts serve)");
    println!("bench-inventory: making a host of {} processes with {} fds each", opts.procs, opts.fds);
    let mut host = Command::new(&bins.workload)
        .args(["fd-host", "--procs", &opts.procs.to_string(), "--fds", &opts.fds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting pidfd-workload fd-host")?;
    let mut ready = String::new();
    BufReader::new(host.stdout.take().context("piped")?).read_line(&mut ready)?;
    ensure!(ready.contains("ready"), "fd-host did not get ready: {ready:?}");
    let result = measure(opts, bins);
    drop(host.stdin.take()); // fd-host exits, its children die with it
    let _ = host.wait();
    result
}

fn measure(opts: &Options, bins: &crate::Binaries) -> Result<()> {
    let mut samples = Vec::new();
    let mut summary = String::new();
    for _ in 0..opts.runs.max(1) {
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let out = Command::new(&bins.agent).arg("ls").stderr(Stdio::null()).output()?;
        let wall = t0.elapsed();
        let cpu = children_cpu() - cpu0;
        summary = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
        samples.push((cpu, wall));
    }
    samples.sort();
    let (ls_cpu, ls_wall) = samples[samples.len() / 2];
    println!("bench-inventory: ls: {summary}");
    println!(
        "bench-inventory: ls (median of {}): {:.0} ms CPU, {:.0} ms wall",
        samples.len(),
        ls_cpu.as_secs_f64() * 1e3,
        ls_wall.as_secs_f64() * 1e3
    );
    // serve at the default interval: the first refresh's figures from its metrics.
    let mut serve = Command::new(&bins.agent)
        .args(["serve", "--web.listen-address", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = BufReader::new(serve.stderr.take().context("piped")?);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            if let Some(a) = l.split("serving metrics on http://").nth(1) {
                let _ = tx.send(a.split('/').next().unwrap_or_default().to_string());
            }
        }
    });
    let figures = (|| -> Result<(f64, f64, f64)> {
        let addr = rx.recv_timeout(Duration::from_secs(120)).context("serve did not start")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut s = TcpStream::connect(&addr)?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            if let (Some(cpu), Some(wall), Some(interval)) = (
                metric(&body, "pidfd_trace_inventory_cpu_seconds_total"),
                metric(&body, "pidfd_trace_inventory_refresh_seconds"),
                metric(&body, "pidfd_trace_inventory_interval_seconds"),
            ) && cpu > 0.0
            {
                return Ok((cpu, wall, interval));
            }
            if Instant::now() > deadline {
                bail!("serve exported no inventory figures within 120 s");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })();
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let _ = serve.wait();
    let (cpu, wall, interval) = figures?;
    println!(
        "bench-inventory: serve refresh: {:.0} ms CPU, {:.0} ms wall; interval in use {:.0} s (default 30 s) = {:.2}% of one CPU",
        cpu * 1e3,
        wall * 1e3,
        interval,
        cpu * 100.0 / interval
    );
    Ok(())
}
