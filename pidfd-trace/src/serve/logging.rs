//! The agent's own log lines on stderr for `serve`: `--log-format text|json` and
//! `--log-level`. Events never go here; they go to the events log.
use std::io::Write;

use crate::cli::{LogLevel, Output};

pub fn init(format: Output, level: LogLevel) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level.filter()).format_target(false);
    if format == Output::Json {
        b.format(|buf, record| {
            let line = serde_json::json!({
                "ts": crate::event::format_rfc3339(now_unix_ns()),
                "level": record.level().as_str().to_ascii_lowercase(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

fn now_unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
