//! JSON lines: one `Event` object per line; the schema is docs/events.md.
use std::io::{self, Write};

use super::Sink;
use crate::event::Event;

/// The JSON-lines sink: one object per event, the schema of docs/events.md.
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    /// Writes to `out` (callers add buffering).
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, ev)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
