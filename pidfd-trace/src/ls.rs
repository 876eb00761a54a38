//! `pidfd-trace ls`: every open pidfd on the host now, read from `/proc` (no agent, no BPF).
//! Text: one line per pidfd, biggest holders first, then a total line. JSON: one
//! [`OpenPidfd`](crate::inventory::OpenPidfd) object per line, in the same order.
use std::{
    collections::HashMap,
    io::{self, Write},
};

use anyhow::{Result, bail};

use crate::{
    cli::{LsArgs, Output},
    inventory::{self, OpenPidfd, Scan, Select},
};

/// Scans, prints, and reports what could not be read (exit 1).
pub fn run(args: LsArgs) -> Result<()> {
    let scan = inventory::scan(&Select { pids: args.pids.clone(), comms: args.comms.clone() });
    let mut rows: Vec<&OpenPidfd> = scan.pidfds.iter().filter(|p| !args.stale || p.stale).collect();
    sort_biggest_first(&mut rows);
    let out = io::stdout().lock();
    let written = match args.output {
        Output::Json => write_json(out, &rows),
        Output::Text => write_text(out, &rows, &scan),
    };
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        r => r?,
    }
    let missing: Vec<String> = args
        .pids
        .iter()
        .filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .map(u32::to_string)
        .collect();
    if !scan.unreadable.is_empty() {
        bail!(
            "could not read the fds of {} processes, so the list misses their pidfds: {}; run as root (reading another process's fds needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH), or choose your own processes with --pid",
            scan.unreadable.len(),
            inventory::describe_unreadable(&scan.unreadable)
        );
    }
    if !missing.is_empty() {
        bail!("no process with pid {}; see `ps -e` for the pids that exist", missing.join(", "));
    }
    Ok(())
}

/// Holders with the most pidfds first (then by pid), each holder's pidfds by fd.
fn sort_biggest_first(rows: &mut [&OpenPidfd]) {
    let mut per: HashMap<u32, usize> = HashMap::new();
    for r in rows.iter() {
        *per.entry(r.holder_pid).or_insert(0) += 1;
    }
    rows.sort_by(|a, b| {
        per[&b.holder_pid]
            .cmp(&per[&a.holder_pid])
            .then(a.holder_pid.cmp(&b.holder_pid))
            .then(a.fd.cmp(&b.fd))
    });
}

fn write_json(mut out: impl Write, rows: &[&OpenPidfd]) -> io::Result<()> {
    for r in rows {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn write_text(out: impl Write, rows: &[&OpenPidfd], scan: &Scan) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    writeln!(
        out,
        "{:<16} {:>7} {:>6}  {:<16} {:>7} {:<7} {:<6} {:<8} {:>10}",
        "HOLDER", "PID", "FD", "TARGET", "TPID", "STATE", "THREAD", "NONBLOCK", "PIDFD_INO"
    )?;
    let yes = |b: bool| if b { "yes" } else { "no" };
    for r in rows {
        writeln!(
            out,
            "{:<16} {:>7} {:>6}  {:<16} {:>7} {:<7} {:<6} {:<8} {:>10}",
            crate::names::printable(&r.holder_comm),
            r.holder_pid,
            r.fd,
            crate::names::printable(r.target_comm.as_deref().unwrap_or("-")),
            r.target_pid.map_or("-".into(), |p| p.to_string()),
            r.target_state.as_str(),
            yes(r.thread),
            yes(r.nonblock),
            r.pidfd_ino.map_or("-".into(), |i| i.to_string()),
        )?;
    }
    let holders = rows.iter().map(|r| r.holder_pid).collect::<std::collections::HashSet<_>>().len();
    let stale = rows.iter().filter(|r| r.stale).count();
    writeln!(
        out,
        "total: {} open pidfds ({stale} stale) held by {holders} processes; scanned {} processes, {} fds in {} ms",
        rows.len(),
        scan.processes,
        scan.fds,
        scan.wall.as_millis()
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::TargetState;

    fn p(holder: u32, fd: i32) -> OpenPidfd {
        OpenPidfd {
            holder_pid: holder,
            holder_comm: format!("h{holder}"),
            fd,
            target_pid: Some(1),
            ns_target_pid: None,
            target_comm: Some("init".into()),
            target_state: TargetState::Alive,
            stale: false,
            thread: false,
            nonblock: false,
            flags: 0o2000002,
            pidfd_ino: None,
        }
    }

    #[test]
    fn biggest_holder_first_then_total() {
        let v = [p(5, 3), p(9, 4), p(9, 3), p(2, 7)];
        let mut rows: Vec<&OpenPidfd> = v.iter().collect();
        sort_biggest_first(&mut rows);
        let order: Vec<(u32, i32)> = rows.iter().map(|r| (r.holder_pid, r.fd)).collect();
        assert_eq!(order, [(9, 3), (9, 4), (2, 7), (5, 3)]);
        let mut buf = Vec::new();
        write_text(&mut buf, &rows, &Scan::default()).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("HOLDER") && text.lines().count() == 6, "{text}");
        assert!(
            text.lines().last().unwrap().starts_with("total: 4 open pidfds (0 stale) held by 3 processes")
        );
    }
}
