//! Sinks: where decoded events go. Each only formats and delivers.
pub mod json;
pub mod text;

use std::io;

use crate::event::Event;

/// One output interface for every sink.
pub trait Sink {
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    /// Called after each batch of events, so output is timely without a flush per line.
    fn flush(&mut self) -> io::Result<()>;
}
