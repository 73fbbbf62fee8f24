//! Records: what proc_image reports, typed from the BPF side to every sink.
//!
//! A `Record` is the part every line has (time, task, cgroup) and a body:
//! one collector's own record type, an `Event`. Each collector's module
//! defines its records as Rust types (serde, field order = JSON order) and
//! implements `Event` for them: what they add to the metrics and what they
//! draw in the trace, through the `MetricsOut` and `TraceOut` interfaces
//! the sinks offer. Text and JSON Lines come from their serialization.
//! Sinks see records only through this interface: none looks a field up by
//! name, and none knows a collector.

use std::fmt::Debug;

use serde_json::{Map, Value};

pub mod families;
pub mod histogram;

use families::{Fam, Labels};
use histogram::Log2Hist;

/// One collector's record.
pub trait Event: Debug + Send {
    /// The collector that made it ("proc_image" for the tool's own).
    fn collector(&self) -> &'static str;
    /// Its `event` name.
    fn name(&self) -> &'static str;
    /// Its fields, `event` first, as a JSON object (`write_json_of` of a
    /// serde type tagged by `event`), written straight into `out`.
    fn write_json(&self, out: &mut Vec<u8>);
    /// The same as a JSON value (text output, tests).
    fn to_value(&self) -> Value {
        let mut bytes = Vec::new();
        self.write_json(&mut bytes);
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
    /// What it adds to the Prometheus families.
    fn metrics(&self, _rec: &Record, _m: &mut dyn MetricsOut) {}
    /// What it draws in the trace.
    fn trace(&self, _rec: &Record, _t: &mut dyn TraceOut) {}
    /// An off-CPU stack in folded form (root first, `;`-separated) and
    /// its weight in ns, for --folded.
    fn folded(&self, _rec: &Record) -> Option<(String, u64)> {
        None
    }
}

/// What a record may add to the metrics (the exporter implements it). The
/// label helpers know the target, the record's thread and process, the
/// bounded label sets and the cgroup.
pub trait MetricsOut {
    /// The current target's label ("system", "tgid:42", ...).
    fn target(&self) -> String;
    /// target, tgid, pid, comm (and cgroup) of the record's thread, or the
    /// "other" aggregate when it is not among the busiest (`activity`
    /// ranks it).
    fn thread(&mut self, activity: u64) -> Labels;
    /// The series the threads not labelled of their own sum into.
    fn other_threads(&self) -> Labels;
    /// target, tgid, comm of the record's process, if among the busiest.
    fn process(&mut self, activity: u64) -> Option<Labels>;
    /// The series the processes not labelled of their own sum into.
    fn other_processes(&self) -> Labels;
    /// target, tgid, uaddr of an address (a futex) of the record's process,
    /// if among the most active (`activity` ranks it), or the "other" sum.
    fn address(&mut self, uaddr: &str, activity: u64) -> Labels;
    /// How much the record's process's cumulative `totals` grew since its
    /// last record (all of them after a restart).
    fn growth(&mut self, totals: &[u64]) -> Vec<f64>;
    fn add(&mut self, fam: Fam, labels: Labels, v: f64);
    fn set(&mut self, fam: Fam, labels: Labels, v: f64);
    /// One observation of a histogram family.
    fn observe_ns(&mut self, fam: Fam, labels: Labels, ns: u64);
    /// A whole interval's histogram, added to the family's.
    fn add_hist(&mut self, fam: Fam, labels: Labels, hist: Log2Hist);
}

/// What a record may draw in the trace (the trace writer implements it).
pub trait TraceOut {
    /// A slice that ended at the record's time, on its thread's track.
    fn slice(&mut self, rec: &Record, name: &str, dur_ns: u64, args: &Value);
    /// An instant on the record's thread, named by its event.
    fn instant(&mut self, rec: &Record, args: Value);
    /// A sample of a counter track of process `tgid`.
    fn counter(&mut self, tgid: u32, name: &str, ts_ns: u64, args: Value);
    /// An async slice [start, end] of the record's thread.
    fn async_slice(
        &mut self,
        rec: &Record,
        cat: &str,
        name: &str,
        start: u64,
        end: u64,
        args: &Value,
    );
    /// The syscalls of a sequence, each [enter_ns, duration_ns], as async
    /// slices written once.
    fn syscalls(&mut self, rec: &Record, names: &[String], spans: &[[u64; 2]]);
    /// Records were lost: a global instant.
    fn lost(&mut self, rec: &Record, args: Value);
    /// A slice [start, end] on thread (tgid, pid)'s track, clipped like
    /// `slice`; false if nothing of it was left to draw.
    fn slice_between(
        &mut self,
        thread: (u32, u32),
        name: &str,
        span: (u64, u64),
        args: &Value,
    ) -> bool;
    /// A flow event ("s" start, "f" end bound to the enclosing slice) of flow `id`.
    fn flow(&mut self, ph: &str, id: u64, thread: (u32, u32), name: &str, ts_ns: u64);
    /// A fresh id for an async slice or a flow.
    fn next_id(&mut self) -> u64;
    /// Name a thread's track seen only as another's partner (a waker).
    fn name_thread(&mut self, tgid: u32, pid: u32, comm: &str);
    /// A 1 ns slice at `ts_ns` on thread (tgid, pid)'s track that nests in
    /// whatever slice the track has then (neither clipped nor clipping):
    /// where a flow from that thread starts.
    fn mark(&mut self, thread: (u32, u32), name: &str, ts_ns: u64, args: &Value);
}

#[derive(Debug)]
pub struct Record {
    /// CLOCK_MONOTONIC ns
    pub ts_ns: u64,
    pub collector: &'static str,
    /// thread id
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub body: Box<dyn Event>,
    /// whole-system records: the task's cgroup
    pub cgroup: Option<Cgroup>,
}

/// The task's cgroup v2: its id and path.
#[derive(Debug, Clone, PartialEq)]
pub struct Cgroup {
    pub cgroup_id: u64,
    pub cgroup: String,
}

impl Record {
    pub fn new(ts_ns: u64, body: impl Event + 'static) -> Self {
        Record {
            ts_ns,
            collector: body.collector(),
            pid: 0,
            tgid: 0,
            comm: String::new(),
            body: Box::new(body),
            cgroup: None,
        }
    }

    pub fn task(mut self, pid: u32, tgid: u32, comm: impl Into<String>) -> Self {
        self.pid = pid;
        self.tgid = tgid;
        self.comm = comm.into();
        self
    }

    /// The task's cgroup (id and path), which records of the whole system carry.
    pub fn cgroup(mut self, id: u64) -> Self {
        self.cgroup = Some(Cgroup {
            cgroup_id: id,
            cgroup: crate::sys::cgroup_name(id),
        });
        self
    }

    pub fn event(&self) -> &'static str {
        self.body.name()
    }

    /// The record as JSON, field for field as `--json` prints it: the
    /// common fields, `event` and the body's, the cgroup last.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("ts_ns".into(), self.ts_ns.into());
        m.insert("collector".into(), self.collector.into());
        m.insert("pid".into(), self.pid.into());
        m.insert("tgid".into(), self.tgid.into());
        m.insert("comm".into(), self.comm.clone().into());
        match self.body.to_value() {
            Value::Object(body) => m.extend(body),
            _ => {
                m.insert("event".into(), self.event().into());
            }
        }
        if let Some(c) = &self.cgroup {
            m.insert("cgroup_id".into(), c.cgroup_id.into());
            m.insert("cgroup".into(), c.cgroup.clone().into());
        }
        Value::Object(m)
    }

    /// The record as one line of JSON, as `--json` prints it, without going
    /// through a `Value`: the common fields, the body's, the cgroup.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(
            out,
            r#"{{"ts_ns":{},"collector":"{}","pid":{},"tgid":{},"comm":"#,
            self.ts_ns, self.collector, self.pid, self.tgid
        );
        let _ = serde_json::to_writer(&mut *out, &self.comm);
        let mut body = Vec::with_capacity(256);
        self.body.write_json(&mut body);
        // the body's object, its braces dropped
        match body.len() {
            0..=2 => {
                let _ = write!(out, r#","event":"{}""#, self.event());
            }
            n => {
                out.push(b',');
                out.extend_from_slice(&body[1..n - 1]);
            }
        }
        if let Some(c) = &self.cgroup {
            let _ = write!(out, r#","cgroup_id":{},"cgroup":"#, c.cgroup_id);
            let _ = serde_json::to_writer(&mut *out, &c.cgroup);
        }
        out.push(b'}');
    }

    /// The fields after the common ones (ts_ns .. event), in order: what
    /// text output prints as `name=value`.
    pub fn details(&self) -> Vec<(String, Value)> {
        match self.to_json() {
            Value::Object(map) => map.into_iter().skip(6).collect(),
            _ => Vec::new(),
        }
    }

    /// One field by name, as JSON: for tests and debugging, not for sinks.
    pub fn get(&self, name: &str) -> Option<Value> {
        match self.to_json() {
            Value::Object(mut map) => map.remove(name),
            _ => None,
        }
    }
}

/// `Event::write_json` for a serde type: its JSON, `event` tag first.
pub fn write_json_of(v: &impl serde::Serialize, out: &mut Vec<u8>) {
    // writing into a Vec cannot fail; a type that cannot serialize is a bug
    let _ = serde_json::to_writer(out, v);
}

/// Serialize a u64 as `0x..` (addresses, flags).
pub fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}
