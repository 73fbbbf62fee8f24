//! Records: what proc_image reports, typed from the BPF side to every sink.
//!
//! A `Record` is the common part every line has (time, task, cgroup) and a
//! `Body`: one collector's own record type. Each collector's module defines
//! its records as Rust types (field order = JSON order) and how they show
//! as metrics and in the trace (`Body::metrics`, `Body::trace` dispatch to
//! them); text and JSON Lines come from their serialization. Sinks get the
//! types, never look a field up by name.

use serde::Serialize;
use serde_json::Value;

use crate::collectors::{keytime, lock, resource, schedule, syscall};
use crate::losses::Lost;
use crate::metrics::Updates;
use crate::trace::TraceWriter;

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// CLOCK_MONOTONIC ns
    pub ts_ns: u64,
    pub collector: &'static str,
    /// thread id
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub body: Body,
    /// whole-system records: the task's cgroup
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Cgroup>,
}

/// The task's cgroup v2: its id and path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cgroup {
    pub cgroup_id: u64,
    pub cgroup: String,
}

/// One collector's record. Each inner enum is tagged by `event`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    Keytime(keytime::Event),
    Lock(lock::Event),
    Resource(resource::Event),
    Syscall(syscall::Event),
    Schedule(schedule::Event),
    ProcImage(ProcImageEvent),
}

/// proc_image's own records: losses and what happened to a target.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProcImageEvent {
    Lost(Lost),
    TargetGone { target: String },
    TargetMoved { from: String, to: String },
}

impl Body {
    pub fn collector(&self) -> &'static str {
        match self {
            Body::Keytime(_) => "keytime",
            Body::Lock(_) => "lock",
            Body::Resource(_) => "resource",
            Body::Syscall(_) => "syscall",
            Body::Schedule(_) => "schedule",
            Body::ProcImage(_) => "proc_image",
        }
    }

    pub fn event(&self) -> &'static str {
        match self {
            Body::Keytime(e) => e.name(),
            Body::Lock(e) => e.name(),
            Body::Resource(e) => e.name(),
            Body::Syscall(e) => e.name(),
            Body::Schedule(e) => e.name(),
            Body::ProcImage(e) => match e {
                ProcImageEvent::Lost(_) => "lost",
                ProcImageEvent::TargetGone { .. } => "target_gone",
                ProcImageEvent::TargetMoved { .. } => "target_moved",
            },
        }
    }

    /// What the record adds to the Prometheus families.
    pub fn metrics(&self, rec: &Record, m: &mut Updates) {
        match self {
            Body::Keytime(e) => e.metrics(rec, m),
            Body::Lock(e) => e.metrics(m),
            Body::Resource(e) => e.metrics(rec, m),
            Body::Syscall(e) => e.metrics(rec, m),
            Body::Schedule(e) => e.metrics(m),
            Body::ProcImage(ProcImageEvent::Lost(l)) => l.metrics(m),
            Body::ProcImage(_) => {}
        }
    }

    /// The trace events the record becomes.
    pub fn trace(&self, rec: &Record, t: &mut TraceWriter) {
        match self {
            Body::Keytime(e) => e.trace(rec, t),
            Body::Lock(e) => e.trace(rec, t),
            Body::Resource(e) => e.trace(rec, t),
            Body::Syscall(e) => e.trace(rec, t),
            Body::Schedule(e) => e.trace(rec, t),
            Body::ProcImage(ProcImageEvent::Lost(l)) => l.trace(rec, t),
            Body::ProcImage(_) => {}
        }
    }
}

impl Record {
    pub fn new(ts_ns: u64, body: impl Into<Body>) -> Self {
        let body = body.into();
        Record {
            ts_ns,
            collector: body.collector(),
            pid: 0,
            tgid: 0,
            comm: String::new(),
            body,
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
        self.body.event()
    }

    /// The record as JSON, field for field as `--json` prints it.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
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

impl From<ProcImageEvent> for Body {
    fn from(e: ProcImageEvent) -> Self {
        Body::ProcImage(e)
    }
}

/// Serialize a u64 as `0x..` (addresses, flags).
pub fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}
