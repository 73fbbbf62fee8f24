//! Records and where they go: stdout as fixed-column text for people
//! (default) or JSON Lines for scripts (`--json`), and any number of other
//! sinks (the Prometheus exporter, the trace file). Every collector emits
//! `Record`s; nothing else writes to stdout.

use std::io::{self, BufWriter, Write};

use serde_json::Value;

use crate::record::Record;
use crate::sys;
use crate::target::Target;

/// A consumer of records besides stdout (metrics, trace). Called on the
/// main thread, in record order; it must not block.
pub trait Sink {
    /// Once at start: the collectors proc_image loaded.
    fn loaded(&mut self, _collectors: &[&'static str]) {}
    /// Once at start: the collectors asked for that the kernel refused.
    fn refused(&mut self, _collectors: &[&'static str]) {}
    /// An activation began.
    fn activated(&mut self, _target: &Target, _collectors: &[&'static str]) {}
    fn record(&mut self, rec: &Record);
    /// Those collectors' activations ended (their last records were delivered).
    fn deactivated(&mut self, _collectors: &[&'static str]) {}
    /// --bpf-stats: every program's runs and run time so far.
    fn bpf_stats(&mut self, _stats: &[crate::bpf_stats::ProgStats]) {}
    fn flush(&mut self) {}
    /// proc_image ends: complete what was written. Called once.
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// Nothing on stdout: only --metrics and --trace-out see the records
    None,
}

/// Column header of text output; every collector uses the same columns.
pub const TEXT_HEADER: &str =
    "TIME            COLLECTOR TID     TGID    COMM             EVENT          DETAILS";

/// Writes records to stdout. A closed stdout (`proc_image | head`) is not an
/// error: it sets `closed` and proc_image ends cleanly.
pub struct Output {
    format: Format,
    out: BufWriter<Box<dyn Write>>,
    /// realtime - monotonic, to print monotonic timestamps as wall-clock time
    wall_offset_ns: i128,
    closed: bool,
    records: u64,
    /// records written per collector
    by_collector: std::collections::HashMap<&'static str, u64>,
    sinks: Vec<Box<dyn Sink>>,
}

impl Output {
    pub fn stdout(format: Format) -> Self {
        Self::new(format, Box::new(io::stdout()))
    }

    pub fn new(format: Format, sink: Box<dyn Write>) -> Self {
        Output {
            format,
            out: BufWriter::with_capacity(64 * 1024, sink),
            wall_offset_ns: sys::realtime_ns() as i128 - sys::monotonic_ns() as i128,
            closed: false,
            records: 0,
            by_collector: Default::default(),
            sinks: Vec::new(),
        }
    }

    pub fn with_sinks(mut self, sinks: Vec<Box<dyn Sink>>) -> Self {
        self.sinks = sinks;
        self
    }

    pub fn loaded(&mut self, collectors: &[&'static str]) {
        self.sinks.iter_mut().for_each(|s| s.loaded(collectors));
    }

    pub fn refused(&mut self, collectors: &[&'static str]) {
        self.sinks.iter_mut().for_each(|s| s.refused(collectors));
    }

    pub fn bpf_stats(&mut self, stats: &[crate::bpf_stats::ProgStats]) {
        self.sinks.iter_mut().for_each(|s| s.bpf_stats(stats));
    }

    pub fn activated(&mut self, target: &Target, collectors: &[&'static str]) {
        self.sinks
            .iter_mut()
            .for_each(|s| s.activated(target, collectors));
    }

    pub fn deactivated(&mut self, collectors: &[&'static str]) {
        self.sinks
            .iter_mut()
            .for_each(|s| s.deactivated(collectors));
    }

    /// Complete every sink (the trace file's closing bracket); idempotent.
    pub fn finish(&mut self) {
        self.flush();
        for mut sink in self.sinks.drain(..) {
            if let Err(e) = sink.finish() {
                eprintln!("proc_image: {e:#}");
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Records written so far by one collector.
    pub fn records_of(&self, collector: &str) -> u64 {
        self.by_collector.get(collector).copied().unwrap_or(0)
    }

    /// The section header printed when a collector is activated (text only).
    pub fn section(&mut self, title: &str) {
        if self.format == Format::Text {
            let text = format!("# {title}\n{TEXT_HEADER}\n");
            self.write(text.as_bytes());
        }
    }

    pub fn emit(&mut self, rec: &Record) {
        for sink in &mut self.sinks {
            sink.record(rec);
        }
        self.records += 1;
        *self.by_collector.entry(rec.collector).or_default() += 1;
        let line = match self.format {
            Format::None => return,
            Format::Json => {
                let mut line = Vec::with_capacity(512);
                rec.write_json(&mut line);
                line.push(b'\n');
                self.write(&line);
                return;
            }
            Format::Text => {
                let wall = (rec.ts_ns as i128 + self.wall_offset_ns).max(0) as u64;
                format_text(rec, &sys::local_time_of_day(wall))
            }
        };
        self.write(line.as_bytes());
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        if let Err(e) = self.out.write_all(bytes) {
            self.note_error(e);
        }
    }

    pub fn flush(&mut self) {
        self.sinks.iter_mut().for_each(|s| s.flush());
        if self.closed {
            return;
        }
        if let Err(e) = self.out.flush() {
            self.note_error(e);
        }
    }

    fn note_error(&mut self, e: io::Error) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            eprintln!("proc_image: cannot write output: {e}");
        }
        self.closed = true;
    }
}

/// Every way out of proc_image (errors, panics that unwind) completes the sinks.
impl Drop for Output {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One text line: fixed columns, then `name=value` details.
/// Fields JSON carries for scripts and the trace that a person reading
/// text does not need: raw CLOCK_MONOTONIC timestamps (the TIME column and
/// the durations beside them say the same).
const NOT_IN_TEXT: &[&str] = &["sequence_spans", "request_ns", "acquire_ns", "release_ns"];

pub fn format_text(rec: &Record, time: &str) -> String {
    let details: Vec<String> = rec
        .details()
        .iter()
        .filter(|(name, _)| !NOT_IN_TEXT.contains(&name.as_str()))
        .map(|(name, value)| {
            format!(
                "{}={}",
                name.trim_end_matches("_ns"),
                text_value(name, value)
            )
        })
        .collect();
    format!(
        "{time:<15} {:<9} {:<7} {:<7} {:<16} {:<14} {}\n",
        rec.collector,
        rec.pid,
        rec.tgid,
        rec.comm,
        rec.event(),
        details.join(" ")
    )
}

/// Durations (`*_ns` fields) are shown in human units in text output.
fn text_value(name: &str, value: &Value) -> String {
    match value {
        Value::Number(n) if name.ends_with("_ns") => match n.as_u64() {
            Some(ns) => human_duration(ns),
            None => n.to_string(),
        },
        Value::String(s) if s.is_empty() || s.contains(char::is_whitespace) => format!("{s:?}"),
        Value::String(s) => s.clone(),
        // a stack: its functions, innermost first, without spaces
        Value::Array(frames) if frames.first().is_some_and(|f| f.get("fn").is_some()) => frames
            .iter()
            .map(|f| {
                f["fn"]
                    .as_str()
                    .unwrap_or("?")
                    .split_whitespace()
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("<"),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(|v| text_value("", v)).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

pub fn human_duration(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=9_999_999_999 => format!("{:.3}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use crate::collectors::keytime::{Event, Exec, OffCpu};

    fn sample() -> Record {
        let off = OffCpu {
            cpu: 1,
            duration_ns: 200_000_000,
            reason: "sleep",
            blocked_in: None,
            prev_state: 1,
            ..Default::default()
        };
        Record::new(5, Event::OffCpu(off)).task(12, 10, "worker")
    }

    #[test]
    fn json_has_common_fields_first() {
        let v = sample().to_json();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "ts_ns",
                "collector",
                "pid",
                "tgid",
                "comm",
                "event",
                "cpu",
                "duration_ns",
                "reason",
                "prev_state"
            ]
        );
        assert_eq!(v["duration_ns"], 200_000_000u64);
    }

    #[test]
    fn a_stack_is_one_word_in_text() {
        let frame = |f: &str, m: &str| crate::collectors::keytime::stacks::Frame {
            func: f.into(),
            module: m.into(),
            offset: 4,
            file: None,
            line: None,
            inlined: false,
        };
        let off = OffCpu {
            cpu: 1,
            duration_ns: 2_000_000,
            reason: "sleep",
            blocked_in: None,
            prev_state: 1,
            stack: Some(vec![
                frame("pipe_read", "kernel"),
                frame("<T as Read>::read", "/bin/x"),
            ]),
            ..Default::default()
        };
        let rec = Record::new(5, Event::OffCpu(off)).task(12, 10, "worker");
        let line = format_text(&rec, "t");
        assert!(line.contains(" stack=pipe_read<<TasRead>::read"), "{line}");
    }

    #[test]
    fn text_columns_and_durations() {
        let line = format_text(&sample(), "10:00:00.000001");
        assert!(
            line.starts_with("10:00:00.000001 keytime   12      10      worker           off_cpu")
        );
        assert!(
            line.ends_with("cpu=1 duration=200.000ms reason=sleep prev_state=0x1\n"),
            "{line}"
        );
        let exec = Exec {
            filename: "/bin/x".into(),
            argv: vec!["a b".into(), "c".into()],
            old_pid: None,
            argv_truncated: false,
        };
        let argv = Record::new(0, Event::Execve(exec));
        assert!(format_text(&argv, "t").contains("argv=[\"a b\",c]"));
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(human_duration(999), "999ns");
        assert_eq!(human_duration(15_000), "15.0us");
        assert_eq!(human_duration(50_000_000), "50.000ms");
        assert_eq!(human_duration(2_254_000), "2.254ms");
        assert_eq!(human_duration(12_000_000_000), "12.000s");
    }

    /// A sink that fails like a closed pipe after `ok` bytes.
    struct Pipe {
        ok: usize,
        taken: Arc<Mutex<Vec<u8>>>,
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut t = self.taken.lock().unwrap();
            if t.len() >= self.ok {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            t.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn closed_pipe_ends_quietly() {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let mut out = Output::new(
            Format::Json,
            Box::new(Pipe {
                ok: 10,
                taken: taken.clone(),
            }),
        );
        for _ in 0..10_000 {
            out.emit(&sample());
        }
        out.flush();
        assert!(out.is_closed());
        let text = String::from_utf8(taken.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "only whole lines are written");
    }
}
