//! `--trace-out FILE`: the records as a Chrome Trace Event JSON array,
//! which ui.perfetto.dev and chrome://tracing open.
//!
//! Tracks: one per thread (tid = pid), grouped by process (pid = tgid) and
//! named by comm. On-CPU and off-CPU intervals are complete ("X") slices on
//! the thread's track, off-CPU ones named by reason; fork, vfork,
//! pthread_create, execve and exit are thread-scoped instants; lock waits
//! and holds, and the syscalls of each interval's sequence (`controller -s
//! N`: the last N per thread), are async slices (they overlap the CPU
//! slices); futex waits are slices with a flow arrow from their waker (see
//! collectors/futex.rs); CPU %, RSS, I/O rates, syscall rates and latencies
//! are counters.
//!
//! The file is written as records arrive and its array is closed when the
//! sink finishes (every way proc_image ends, see output.rs); the JSON Array
//! Format also lets viewers read a file cut short by SIGKILL. Timestamps are
//! CLOCK_MONOTONIC in microseconds. On a thread's track slices never
//! overlap and start in time order (a slice that would start before the
//! previous one ended is clipped); instants and counter samples of a track
//! are in time order (a late one is moved to the track's last timestamp).

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::output::Sink;
use crate::record::{Record, TraceOut};

pub struct TraceWriter {
    path: PathBuf,
    out: Option<BufWriter<Box<dyn Write>>>,
    first: bool,
    /// thread (tgid, pid): end of its last slice, ns
    slice_end: HashMap<(u32, u32), u64>,
    /// (tgid, pid or counter name): last instant or counter time, ns
    last_ts: HashMap<(u32, String), u64>,
    thread_names: HashMap<(u32, u32), String>,
    process_names: HashMap<u32, String>,
    /// ids of async slices (lock phases, syscalls)
    async_ids: u64,
    /// thread (tgid, pid): entry time of its last syscall written, ns
    syscall_seen: HashMap<(u32, u32), u64>,
    error: Option<std::io::Error>,
    counters_named: HashSet<u32>,
}

/// ns as the trace's microseconds.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Nanoseconds as exact decimal microseconds.
struct Us(u64);

impl std::fmt::Display for Us {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

impl TraceWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = crate::sys::create_private_file(path, "--trace-out")?;
        Ok(Self::new(path, Box::new(file)))
    }

    pub fn new(path: &Path, sink: Box<dyn Write>) -> Self {
        let mut w = TraceWriter {
            path: path.to_path_buf(),
            out: Some(BufWriter::with_capacity(256 * 1024, sink)),
            first: true,
            slice_end: HashMap::new(),
            last_ts: HashMap::new(),
            thread_names: HashMap::new(),
            process_names: HashMap::new(),
            async_ids: 0,
            syscall_seen: HashMap::new(),
            error: None,
            counters_named: HashSet::new(),
        };
        w.write_raw("[\n");
        w
    }

    fn write_raw(&mut self, s: &str) {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.write_all(s.as_bytes()) {
                self.error.get_or_insert(e);
            }
        }
    }

    fn event(&mut self, ev: Value) {
        self.event_text(&ev.to_string());
    }

    fn event_text(&mut self, ev: &str) {
        if !self.first {
            self.write_raw(",\n");
        }
        self.first = false;
        self.write_raw(ev);
    }

    /// Name the thread's track and its process's group from comm.
    fn name_track(&mut self, tgid: u32, pid: u32, comm: &str) {
        if comm.is_empty() {
            return;
        }
        if self.thread_names.get(&(tgid, pid)).map(String::as_str) != Some(comm) {
            self.thread_names.insert((tgid, pid), comm.to_string());
            self.event(
                json!({"ph": "M", "name": "thread_name", "pid": tgid, "tid": pid,
                              "args": {"name": comm}}),
            );
        }
        let leader = pid == tgid;
        // the leader's comm names the process; until it is seen, any thread's
        let known = self.process_names.get(&tgid).map(String::as_str);
        if (leader || known.is_none()) && known != Some(comm) {
            self.process_names.insert(tgid, comm.to_string());
            let name = if tgid == 0 {
                "idle / system".to_string()
            } else {
                comm.to_string()
            };
            self.event(
                json!({"ph": "M", "name": "process_name", "pid": tgid, "tid": pid,
                                  "args": {"name": name}}),
            );
        }
    }

    /// A timestamp no earlier than the last one of track `key`.
    fn in_order(&mut self, tgid: u32, key: String, ts: u64) -> u64 {
        let last = self.last_ts.entry((tgid, key)).or_insert(0);
        *last = (*last).max(ts);
        *last
    }

    /// Turn one record into trace events.
    pub fn add(&mut self, rec: &Record) {
        // records without a task (the tool's own, per-target figures) have no comm
        self.name_track(rec.tgid, rec.pid, &rec.comm);
        rec.body.trace(rec, self);
    }

    /// Close the array and flush; later calls do nothing.
    pub fn close(&mut self) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        self.write_raw("\n]\n");
        let mut out = self.out.take().expect("checked above");
        let flushed = out.flush();
        match self.error.take() {
            Some(e) => Err(e),
            None => flushed,
        }
        .with_context(|| format!("--trace-out: write {}", self.path.display()))
    }
}

impl TraceOut for TraceWriter {
    /// A slice [end - dur, end] on the thread's track, clipped so it starts
    /// no earlier than the previous slice ended.
    fn slice(&mut self, rec: &Record, name: &str, dur_ns: u64, args: &Value) {
        let end = rec.ts_ns;
        let key = (rec.tgid, rec.pid);
        let mut start = end.saturating_sub(dur_ns);
        if let Some(&last) = self.slice_end.get(&key) {
            start = start.max(last);
        }
        if end <= start {
            return;
        }
        self.slice_end.insert(key, end);
        // the hot path (every context switch): formatted directly
        let ev = format!(
            r#"{{"ph":"X","cat":"cpu","name":{},"pid":{},"tid":{},"ts":{},"dur":{},"args":{}}}"#,
            Value::from(name),
            rec.tgid,
            rec.pid,
            Us(start),
            Us(end - start),
            args
        );
        self.event_text(&ev);
    }

    /// A slice [start, end] on thread (tgid, pid)'s track, clipped like
    /// `slice`; false if nothing of it was left to write.
    fn slice_between(
        &mut self,
        (tgid, pid): (u32, u32),
        name: &str,
        (start_ns, end_ns): (u64, u64),
        args: &Value,
    ) -> bool {
        let start = match self.slice_end.get(&(tgid, pid)) {
            Some(&last) => start_ns.max(last),
            None => start_ns,
        };
        if end_ns <= start {
            return false;
        }
        self.slice_end.insert((tgid, pid), end_ns);
        let ev = format!(
            r#"{{"ph":"X","cat":"futex","name":{},"pid":{tgid},"tid":{pid},"ts":{},"dur":{},"args":{args}}}"#,
            Value::from(name),
            Us(start),
            Us(end_ns - start)
        );
        self.event_text(&ev);
        true
    }

    /// A flow event ("s" start, "f" end bound to the enclosing slice) of flow `id`.
    fn flow(&mut self, ph: &str, id: u64, (tgid, pid): (u32, u32), name: &str, ts_ns: u64) {
        let mut ev = json!({"ph": ph, "cat": "futex", "name": name, "id": id,
                            "pid": tgid, "tid": pid, "ts": us(ts_ns)});
        if ph == "f" {
            ev["bp"] = "e".into();
        }
        self.event(ev);
    }

    /// A fresh id for an async slice or a flow.
    fn next_id(&mut self) -> u64 {
        self.async_ids += 1;
        self.async_ids
    }

    /// Name a thread's track seen only as another's partner (a waker).
    fn name_thread(&mut self, tgid: u32, pid: u32, comm: &str) {
        self.name_track(tgid, pid, comm);
    }

    /// A 1 ns slice at `ts_ns`, nested in the track's slice then.
    fn mark(&mut self, (tgid, pid): (u32, u32), name: &str, ts_ns: u64, args: &Value) {
        let ev = format!(
            r#"{{"ph":"X","cat":"cpu","name":{},"pid":{tgid},"tid":{pid},"ts":{},"dur":0.001,"args":{args}}}"#,
            Value::from(name),
            Us(ts_ns)
        );
        self.event_text(&ev);
    }

    /// A thread-scoped instant named by the record's event.
    fn instant(&mut self, rec: &Record, args: Value) {
        let ts = self.in_order(rec.tgid, rec.pid.to_string(), rec.ts_ns);
        self.event(
            json!({"ph": "i", "s": "t", "cat": "lifecycle", "name": rec.event(),
                          "pid": rec.tgid, "tid": rec.pid, "ts": us(ts), "args": args}),
        );
    }

    /// A sample of a counter track of process `tgid`.
    fn counter(&mut self, tgid: u32, name: &str, ts_ns: u64, args: Value) {
        if !self.counters_named.contains(&tgid) && !self.process_names.contains_key(&tgid) {
            self.counters_named.insert(tgid);
            let pname = if tgid == 0 {
                "system".to_string()
            } else {
                format!("process {tgid}")
            };
            self.process_names.insert(tgid, pname.clone());
            self.event(
                json!({"ph": "M", "name": "process_name", "pid": tgid, "tid": tgid,
                              "args": {"name": pname}}),
            );
        }
        let ts = self.in_order(tgid, format!("C:{name}"), ts_ns);
        self.event(
            json!({"ph": "C", "name": name, "pid": tgid, "tid": tgid, "ts": us(ts), "args": args}),
        );
    }

    /// An async slice [start, end] of the record's thread (it may overlap
    /// the thread's CPU slices); nothing when start is 0 or after end.
    fn async_slice(
        &mut self,
        rec: &Record,
        cat: &str,
        name: &str,
        start: u64,
        end: u64,
        args: &Value,
    ) {
        if start == 0 || end < start {
            return;
        }
        self.async_ids += 1;
        let id = self.async_ids;
        let base = json!({"cat": cat, "name": name, "id": id, "pid": rec.tgid, "tid": rec.pid});
        for (ph, ts) in [("b", start), ("e", end)] {
            let mut ev = base.clone();
            ev["ph"] = ph.into();
            ev["ts"] = us(ts).into();
            if ph == "b" {
                ev["args"] = args.clone();
            }
            self.event(ev);
        }
    }

    /// The syscalls of a `syscalls` record's sequence, as async slices of
    /// the thread (they overlap its CPU slices). A sequence may repeat
    /// syscalls an earlier record had: only newer ones are written, and only
    /// those that returned.
    fn syscalls(&mut self, rec: &Record, names: &[String], spans: &[[u64; 2]]) {
        let key = (rec.tgid, rec.pid);
        let mut seen = self.syscall_seen.get(&key).copied().unwrap_or(0);
        for (name, &[enter, dur]) in names.iter().zip(spans) {
            if dur == 0 || enter <= seen {
                continue;
            }
            seen = enter;
            self.async_ids += 1;
            for (ph, ts) in [("b", enter), ("e", enter + dur)] {
                self.event(
                    json!({"ph": ph, "cat": "syscall", "name": name, "id": self.async_ids,
                                  "pid": rec.tgid, "tid": rec.pid, "ts": us(ts)}),
                );
            }
        }
        self.syscall_seen.insert(key, seen);
    }

    /// Records were lost: a global instant.
    fn lost(&mut self, rec: &Record, args: Value) {
        let ts = self.in_order(0, "lost".into(), rec.ts_ns);
        self.event(
            json!({"ph": "i", "s": "g", "cat": "proc_image", "name": "records lost",
                          "pid": 0, "tid": 0, "ts": us(ts), "args": args}),
        );
    }
}

/// `part` of `whole` in percent.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64 * 10.0).round() / 10.0
    }
}

impl Sink for TraceWriter {
    fn record(&mut self, rec: &Record) {
        self.add(rec);
    }
    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                self.error.get_or_insert(e);
            }
        }
    }
    fn finish(&mut self) -> Result<()> {
        self.close()
    }
}

/// A trace cut short by an error before it reached Output still closes.
impl Drop for TraceWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests;
