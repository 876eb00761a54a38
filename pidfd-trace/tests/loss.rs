//! Exact loss accounting: with a deliberately tiny ring buffer and a pidfd_open storm, the
//! records delivered plus the records lost equal the kernel's own count of records, the
//! `seq` gaps in the JSON log add up to the lost count, and the metrics (read from the
//! kernel's counters) still equal what the workload really did. Needs root.
mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Unlabelled and labelled samples of the exposition, keyed by the full series text.
fn scrape(port: u16) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to serve");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with("pidfd_trace_"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

fn get(m: &HashMap<String, f64>, series: &str) -> u64 {
    *m.get(series).unwrap_or_else(|| panic!("{series} missing from /metrics: {m:?}")) as u64
}

/// A pidfd_open (of this process) on each CPU this thread may run on, one after another.
fn one_record_per_cpu() {
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed) }, 0);
    for cpu in 0..libc::CPU_SETSIZE as usize {
        if !unsafe { libc::CPU_ISSET(cpu, &allowed) } {
            continue;
        }
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut one) };
        if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) } != 0 {
            continue;
        }
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if fd >= 0 {
            unsafe { libc::close(fd as i32) };
        }
    }
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &allowed) };
}

#[test]
fn delivered_plus_lost_equals_kernel_count_and_counters_stay_exact() {
    common::require_root("loss tests");
    let port = free_port();
    let log = std::env::temp_dir().join(format!("pidfd-trace-loss-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let (mut agent, lines) = common::spawn_collecting(
        Command::new(common::AGENT)
            .args(["serve", "--web.listen-address", &format!("127.0.0.1:{port}"), "--mode", "tracepoint"])
            .args(["--ring-kib", "4", "--events-log"])
            .arg(&log)
            .stdout(Stdio::null()),
    );
    common::wait_attached(&mut agent, &lines, Duration::from_secs(60));
    let before = scrape(port);
    let created = r#"pidfd_trace_pidfds_created_total{source="pidfd_open"}"#;
    let created_before = before.get(created).copied().unwrap_or(0.0) as u64;

    let storm = Command::new(common::WORKLOAD)
        .args(["storm", "200000", "--settle"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let storm_pid = storm.id() as u64;
    let out = storm.wait_with_output().unwrap();
    let storm_ok: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("storm prints its count");
    // A record lost at the very end on a CPU shows as a `seq` gap only once a later record of
    // that CPU arrives: once the ring has drained, one pidfd_open on every CPU closes them all.
    std::thread::sleep(Duration::from_secs(1));
    one_record_per_cpu();
    std::thread::sleep(Duration::from_secs(3)); // the agent drains on its 50 ms tick and 1 s metrics refresh
    let m = scrape(port);
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    assert!(agent.wait().unwrap().success(), "serve exits 0 on SIGTERM");

    // Other processes on the host may make pidfds meanwhile (the counters are host-wide), so
    // what is compared with the storm is bounded by what the agent saw of everyone else.
    let total = get(&m, "pidfd_trace_events_total");
    let received = get(&m, "pidfd_trace_events_received_total");
    let lost_scraped = get(&m, "pidfd_trace_events_lost_total");
    assert!(lost_scraped > 0, "a 4 KiB ring must overflow under a 200k storm (received {received})");
    assert!(
        received + lost_scraped <= total,
        "the kernel counted every record the agent received or lost ({received} + {lost_scraped} > {total})"
    );
    // The closing line, written after the last drain: every record delivered or lost by then.
    let stopped =
        lines.lock().unwrap().iter().find(|l| l.contains("stopped:")).cloned().expect("closing line");
    let num_before = |word: &str| -> u64 {
        let i = stopped.find(word).unwrap_or_else(|| panic!("no {word:?} in {stopped}"));
        stopped[..i].split_whitespace().last().unwrap().parse().unwrap()
    };
    let (final_received, final_lost) = (num_before(" events received"), num_before(" lost"));

    let events: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect();
    let _ = std::fs::remove_file(&log);
    assert_eq!(events.len() as u64, final_received, "every delivered record is in the log");
    let mut seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    let gaps = seqs.last().copied().unwrap_or(0) - seqs.len() as u64;
    assert_eq!(gaps, final_lost, "seq gaps in the log add up to the lost count");

    let others_seen = events
        .iter()
        .filter(|e| e["event"] == "pidfd_open" && e["pid"].as_u64() != Some(storm_pid))
        .filter(|e| e["ret"].as_i64().is_some_and(|r| r >= 0))
        .count() as u64;
    let created_delta = get(&m, created) - created_before;
    assert!(
        created_delta >= storm_ok,
        "every pidfd_open success of the storm is counted despite {final_lost} lost records: {created_delta} < {storm_ok}"
    );
    assert!(
        created_delta <= storm_ok + others_seen + final_lost,
        "nothing counted that did not happen: {created_delta} > storm {storm_ok} + others seen {others_seen} + lost {final_lost}"
    );
    let lost = final_lost;
    eprintln!(
        "storm {storm_ok} ok; at the scrape {total} records, {received} delivered, {lost_scraped} lost; at the end {final_received} delivered, {lost} lost, seq gaps {gaps}; created +{created_delta} ({others_seen} by others seen)"
    );
}
