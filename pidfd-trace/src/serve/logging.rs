//! The agent's own log lines on stderr for `serve`: `--log-format text|json` and
//! `--log-level`. Events never go here; they go to the events log.
//!
//! Under `--log-format json` every line the process writes to stderr is one JSON object
//! `{"ts","level","msg"}`: log records, the `attached` line, the closing summary, a fatal
//! error, a command-line error and even a panic.
use std::{
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::cli::{LogLevel, Output};

static JSON: AtomicBool = AtomicBool::new(false);

pub fn init(format: Output, level: LogLevel) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level.filter()).format_target(false);
    if format == Output::Json {
        JSON.store(true, Ordering::Relaxed);
        b.format(|buf, record| {
            writeln!(
                buf,
                "{}",
                json_line(&record.level().as_str().to_ascii_lowercase(), &record.args().to_string())
            )
        });
        std::panic::set_hook(Box::new(|info| {
            eprintln!("{}", json_line("error", &format!("pidfd-trace panicked: {info}")));
        }));
    }
    b.init();
}

/// Whether stderr lines must be JSON (`serve --log-format json`).
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Writes a status line that must reach stderr whatever the log level (the `attached`
/// line): as is, or as a JSON object at level `info` under `--log-format json`.
pub fn status(msg: &str) {
    if json() {
        eprintln!("{}", json_line("info", msg));
    } else {
        eprintln!("{msg}");
    }
}

/// Writes the line that ends the process with an error, in the format in force.
pub fn fatal(msg: &str) {
    if json() {
        eprintln!("{}", json_line("error", msg));
    } else {
        eprintln!("{msg}");
    }
}

/// Whether the raw command line asks for `serve --log-format json`: used when the command
/// line itself is wrong, so that even that error is a JSON line.
pub fn json_requested(args: &[String]) -> bool {
    args.get(1).is_some_and(|c| c == "serve")
        && (args.windows(2).any(|w| w[0] == "--log-format" && w[1] == "json")
            || args.iter().any(|a| a == "--log-format=json"))
}

/// Marks stderr as JSON before the command line is parsed (see [`json_requested`]).
pub fn force_json() {
    JSON.store(true, Ordering::Relaxed);
}

pub fn json_line(level: &str, msg: &str) -> String {
    serde_json::json!({
        "ts": crate::event::format_rfc3339(now_unix_ns()),
        "level": level,
        "msg": msg,
    })
    .to_string()
}

fn now_unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_command_line() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(json_requested(&v("pidfd-trace serve --log-format json --bogus")));
        assert!(json_requested(&v("pidfd-trace serve --log-format=json --max-label-values x")));
        assert!(!json_requested(&v("pidfd-trace serve --log-format text")));
        assert!(!json_requested(&v("pidfd-trace trace --output json")));
        assert!(!json_requested(&v("pidfd-trace trace --log-format=json")));
    }

    #[test]
    fn lines_are_json() {
        let l: serde_json::Value = serde_json::from_str(&json_line("info", "a \"quoted\"\nline")).unwrap();
        assert_eq!(l["level"], "info");
        assert_eq!(l["msg"], "a \"quoted\"\nline");
        assert!(l["ts"].as_str().unwrap().ends_with('Z'));
    }
}
